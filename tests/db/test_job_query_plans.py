"""Every statement the job machinery runs again and again reads an index, never the whole job
table: the table keeps every job's history, so a full scan costs more each day.

On PostgreSQL the plan that matters is the generic one: after five runs of a prepared statement
the server keeps it for good whenever it looks about as cheap as planning for each run's values
(as it does while the table is small). It cannot see the parameters' values, so it must find the
index from the SQL alone.
"""

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Executable, event, insert

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import Database
from app.services import job_statements, job_stats

# Values for every bind parameter of the job statements; each takes the ones it names.
_PARAMS = {
    "b_now": utcnow(),
    "b_limit": 1,
    "b_worker": "w",
    "b_locked_until": utcnow(),
    "b_job_id": uuid.uuid4(),
    "b_republish_before": utcnow(),
}


async def _driver_sql(db: Database, statement: Executable) -> tuple[str, int]:
    """The SQL of `statement` as it reaches the driver (IN lists of constants written out),
    and its number of parameters: seen by an engine event as it runs, rolled back."""
    sent: list[tuple[str, int]] = []

    def seen(_conn: object, _cursor: object, sql: str, parameters: Any, *_: object) -> None:
        sent.append((sql, len(parameters)))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.engine.connect() as connection:
            transaction = await connection.begin()
            await connection.execute(statement, _PARAMS)
            await transaction.rollback()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    [found] = sent
    return found


async def _plan(db: Database, statement: Executable) -> str:
    """The plan the database picks for `statement` whatever its parameters: on PostgreSQL the
    generic plan of the prepared statement; on SQLite the plan of its SQL."""
    sql, count = await _driver_sql(db, statement)
    blanks = (None,) * count
    async with db.engine.connect() as connection:
        if not db.is_postgresql:
            rows = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", blanks)
            return "\n".join(str(row[-1]) for row in rows)
        pooled = await connection.get_raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        # A generic plan does not depend on the values: NULL stands for each parameter.
        blanks_sql = f"({', '.join('NULL' for _ in blanks)})" if blanks else ""
        async with driver.transaction():
            await driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await driver.execute(f"PREPARE job_query AS {sql}")
            try:
                plan = await driver.fetch(f"EXPLAIN EXECUTE job_query{blanks_sql}")
            finally:
                await driver.execute("DEALLOCATE job_query")
        return "\n".join(row[0] for row in plan)


def _full_scans_of_jobs(plan: str) -> list[str]:
    return [
        line.strip()
        for line in plan.splitlines()
        if re.search(r"Seq Scan on jobs\b|^\s*SCAN jobs\b", line)
    ]


async def _long_history(db: Database) -> None:
    """A table where most jobs are long done; on PostgreSQL with the statistics autovacuum
    keeps (the service never analyses its SQLite database)."""
    done = {
        "name": "old",
        "payload": {},
        "status": JobStatus.SUCCEEDED,
        "attempts": 1,
        "max_attempts": 1,
        "run_at": utcnow() - timedelta(days=1),
    }
    for _ in range(10):  # in batches, each too small to hold the event loop
        async with db.transaction() as session:
            await session.execute(insert(Job), [done] * 500)
    if db.is_postgresql:
        async with db.engine.connect() as connection:
            await connection.exec_driver_sql("ANALYZE jobs")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_claim_reads_the_next_pending_jobs_from_their_partial_index(app: FastAPI) -> None:
    """However long the backlog: the index is in run_at order, so the claim stops at its limit."""
    db: Database = app.state.db
    await app.state.jobs.stop()
    await _long_history(db)
    plan = await _plan(db, job_statements.CLAIM["pending", True])
    assert "ix_jobs_pending_run_at" in plan, plan


async def test_no_job_statement_scans_the_whole_table(app: FastAPI) -> None:
    db: Database = app.state.db
    await app.state.jobs.stop()
    await _long_history(db)
    statements = {
        "claim of pending jobs": job_statements.CLAIM["pending", db.is_postgresql],
        "claim of abandoned jobs": job_statements.CLAIM["abandoned", db.is_postgresql],
        "claim of one job": job_statements.CLAIM["one", db.is_postgresql],
        "idle poll": job_statements.HAS_WORK,
        "burial of abandoned last attempts": job_statements.BURY_ABANDONED,
        "relay's claim": job_statements.CLAIM_FOR_PUBLISH,
        **{f"job gauges: {name}": s for name, s in job_stats.statements(utcnow()).items()},
    }
    scans = {name: _full_scans_of_jobs(await _plan(db, s)) for name, s in statements.items()}
    assert scans == {name: [] for name in statements}, scans
