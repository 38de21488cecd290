"""Core statements on Database.statement(), the connection job bookkeeping runs on; and the
engine's commit mode and error messages."""

from datetime import datetime, timedelta
from typing import cast

import pytest
from fastapi import FastAPI
from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobStatus, User
from app.db.session import Database

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

jobs = cast(Table, Job.__table__)
_DUE = select(jobs.c.id, jobs.c.status, jobs.c.payload).where(
    jobs.c.status.in_((JobStatus.QUEUED, JobStatus.FAILED)),
    jobs.c.run_at <= bindparam("now", type_=jobs.c.run_at.type),
)


async def _add_jobs(db: Database, *statuses: JobStatus) -> None:
    async with db.transaction() as session:
        await session.execute(
            insert(jobs),
            [
                {"name": f"job-{status}", "payload": {"n": i}, "status": status, "max_attempts": 1}
                for i, status in enumerate(statuses)
            ],
        )


async def test_constants_and_parameters_are_bound_with_their_types(app: FastAPI) -> None:
    db: Database = app.state.db
    await app.state.jobs.stop()
    await _add_jobs(db, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.DEAD)
    async with db.statement() as connection:
        rows = (await connection.execute(_DUE, {"now": utcnow() + timedelta(seconds=1)})).all()
        # The enum constants of the IN list went out as their values: dead is left out.
        assert sorted(row.status for row in rows) == [JobStatus.FAILED, JobStatus.QUEUED]
        assert sorted(row.payload["n"] for row in rows) == [0, 1]  # JSON decoded
        later = await connection.execute(_DUE, {"now": utcnow() - timedelta(hours=1)})
        assert later.all() == []


async def test_a_parameter_goes_through_its_type(app: FastAPI) -> None:
    """UTCDateTime refuses a naive datetime."""
    async with app.state.db.statement() as connection:
        with pytest.raises(StatementError, match="naive datetime"):
            await connection.execute(_DUE, {"now": datetime(2026, 1, 1)})


@postgresql_only
async def test_a_statement_commits_by_itself_on_postgresql(app: FastAPI) -> None:
    """Autocommit: another connection sees the row while the block is still open."""
    db: Database = app.state.db
    await app.state.jobs.stop()
    async with db.statement() as connection:
        await connection.execute(insert(jobs), {"name": "alone", "payload": {}, "max_attempts": 1})
        async with db.engine.connect() as other:
            seen = await other.scalar(select(jobs.c.name).where(jobs.c.name == "alone"))
    assert seen == "alone"


async def test_errors_never_show_parameter_values(app: FastAPI) -> None:
    """A unique violation names the statement, not the values (a password hash) it carried."""
    row = {"email": "secret-address@example.com", "name": "S", "hashed_password": "secret-hash"}
    async with app.state.db.transaction() as session:
        await session.execute(insert(User), row)
    with pytest.raises(IntegrityError) as raised:
        async with app.state.db.statement() as connection:
            await connection.execute(insert(User), row)
    assert "secret-hash" not in str(raised.value)
    assert "parameters hidden" in str(raised.value)
    async with app.state.db.transaction() as session:
        await session.execute(text("DELETE FROM users"))


@postgresql_only
@pytest.mark.parametrize(("wait_for_flush", "synchronous_commit"), [(True, "on"), (False, "off")])
async def test_an_engine_may_commit_without_waiting_for_the_flush(
    settings: Settings, wait_for_flush: bool, synchronous_commit: str
) -> None:
    """The Celery worker's engine: its commits are job bookkeeping, repeated when lost.

    Behind a transaction pooler the setting holds per transaction (statements outside one
    take the role's), so it is looked at in one."""
    db = Database.from_settings(settings, wait_for_flush=wait_for_flush)
    try:
        async with db.transaction() as session:
            assert await session.scalar(text("SHOW synchronous_commit")) == synchronous_commit
    finally:
        await db.dispose()
