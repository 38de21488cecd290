"""A page at any depth seeks in its list's index: no scan of what came before, no sort, no count.

On PostgreSQL the plan checked is the generic one of the prepared statement, which the server
keeps after a few runs and which cannot see the cursor's values: the index must be found from
the SQL alone, and the cursor must be an index condition (a filter would read every row before
it, as OFFSET does). For a filtered list that generic plan may walk the unfiltered order and
filter it (cheap while the filter matches many rows); with the values, PostgreSQL and SQLite
seek in the filter's own index.
"""

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Select, insert, select

from app.db.base import utcnow
from app.db.models import ApiKey, Job, JobStatus, LoginSession, User
from app.db.session import Database
from app.services.api_keys import KEYS_ORDER, live_keys
from app.services.jobs import list_order
from app.services.pagination import Ordering, page_query
from app.services.sessions import SESSIONS_ORDER, live_sessions
from app.services.users import USERS_ORDER

ROWS = 5000
OWNERS = 5  # of the keys and sessions: a thousand each, a quarter of them revoked


async def _plan(db: Database, statement: Select[Any]) -> str:
    compiled = statement.compile(dialect=db.engine.dialect)
    sql = compiled.string
    async with db.engine.connect() as connection:
        if not db.is_postgresql:
            blanks = (None,) * sql.count("?")
            rows = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", blanks)
            return "\n".join(str(row[-1]) for row in rows)
        count = max(int(n) for n in re.findall(r"\$(\d+)", sql))
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with driver.transaction():
            await driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await driver.execute(f"PREPARE page_query AS {sql}")
            try:
                nulls = ", ".join("NULL" for _ in range(count))
                plan = await driver.fetch(f"EXPLAIN EXECUTE page_query({nulls})")
            finally:
                await driver.execute("DEALLOCATE page_query")
        return "\n".join(row[0] for row in plan)


async def _fill(db: Database) -> None:
    now = utcnow()
    users = [
        {"id": uuid.uuid4(), "email": f"u{i}@example.com", "name": "U", "hashed_password": "-",
         "created_at": now - timedelta(seconds=i)}
        for i in range(ROWS)
    ]  # fmt: skip
    statuses = list(JobStatus)
    jobs = [
        {"id": uuid.uuid4(), "name": f"job{i % 7}", "payload": {}, "max_attempts": 1,
         "status": statuses[i % len(statuses)], "created_at": now - timedelta(seconds=i)}
        for i in range(ROWS)
    ]  # fmt: skip
    owned = [
        {"id": uuid.uuid4(), "user_id": users[i % OWNERS]["id"],
         "created_at": now - timedelta(seconds=i), "revoked_at": now if i % 4 == 0 else None}
        for i in range(ROWS)
    ]  # fmt: skip
    keys = [row | {"name": "k", "prefix": "ak_", "key_hash": uuid.uuid4().hex} for row in owned]
    logins = [row | {"id": uuid.uuid4(), "expires_at": now + timedelta(days=1)} for row in owned]
    for start in range(0, ROWS, 500):  # in batches, each too small to hold the event loop
        async with db.transaction() as session:
            await session.execute(insert(User), users[start : start + 500])
            await session.execute(insert(Job), jobs[start : start + 500])
            await session.execute(insert(ApiKey), keys[start : start + 500])
            await session.execute(insert(LoginSession), logins[start : start + 500])
    if db.is_postgresql:
        async with db.engine.connect() as connection:
            for table in ("users", "jobs", "api_keys", "login_sessions"):
                await connection.exec_driver_sql(f"ANALYZE {table}")


def _deep_page(query: Select[Any], ordering: Ordering) -> Select[Any]:
    """A page after some row (the generic plan and SQLite's plan never see the values)."""
    return page_query(query, ordering, limit=50, after=(utcnow(), uuid.uuid4()))


LISTS = {
    "users": (select(User), USERS_ORDER, ("ix_users_created_at_id",)),
    "jobs": (select(Job), list_order(status=None, name=None), ("ix_jobs_created_at_id",)),
    "jobs by status": (
        select(Job).where(Job.status == JobStatus.DEAD),
        list_order(status=JobStatus.DEAD, name=None),
        ("ix_jobs_status_created_at_id", "ix_jobs_created_at_id"),
    ),
    "jobs by name": (
        select(Job).where(Job.name == "job3"),
        list_order(status=None, name="job3"),
        ("ix_jobs_name_created_at_id", "ix_jobs_created_at_id"),
    ),
    "a user's api keys": (
        live_keys(uuid.uuid4()),
        KEYS_ORDER,
        ("ix_api_keys_user_id_created_at_id",),
    ),
    "a user's sessions": (
        live_sessions(uuid.uuid4()),
        SESSIONS_ORDER,
        ("ix_login_sessions_user_id_created_at_id",),
    ),
}


@pytest.fixture
async def filled(app: FastAPI) -> Database:
    db: Database = app.state.db
    await app.state.jobs.stop()
    await _fill(db)
    return db


async def test_a_deep_page_of_each_list_seeks_in_its_index(filled: Database) -> None:
    for name, (query, ordering, indexes) in LISTS.items():
        plan = await _plan(filled, _deep_page(query, ordering))
        if not filled.is_postgresql:
            indexes = indexes[:1]  # SQLite seeks in the filter's own index
        assert any(index in plan for index in indexes), (name, plan)
        # No sort of the rows, no scan of the whole table.
        assert not re.search(
            r"\bSort\b|TEMP B-TREE|Seq Scan|^\s*SCAN (users|jobs|api_keys|login_sessions)$", plan
        ), (
            name,
            plan,
        )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_cursor_is_an_index_condition_not_a_filter(filled: Database) -> None:
    for name, (query, ordering, _) in LISTS.items():
        plan = await _plan(filled, _deep_page(query, ordering))
        [condition] = [line for line in plan.splitlines() if "Index Cond" in line]
        assert "ROW(created_at, id)" in condition, (name, plan)
