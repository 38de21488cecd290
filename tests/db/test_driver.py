"""Core statements run on the asyncpg driver (Database.statement() and fetch_one on PostgreSQL)
bind their values as SQLAlchemy would, constants included; and the engine's commit mode."""

from datetime import datetime, timedelta
from typing import cast

import pytest
from fastapi import FastAPI
from sqlalchemy import Table, bindparam, insert, select, text

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import Database, DriverConnection, create_engine

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

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
        assert isinstance(connection, DriverConnection)
        rows = await connection.execute(_DUE, {"now": utcnow() + timedelta(seconds=1)})
        # The enum constants of the IN list went out as their values: dead is left out.
        assert sorted(row["status"] for row in rows) == ["failed", "queued"]
        assert sorted(row["payload"]["n"] for row in rows) == [0, 1]  # JSON decoded
        assert await connection.execute(_DUE, {"now": utcnow() - timedelta(hours=1)}) == []


async def test_a_parameter_goes_through_its_type(app: FastAPI) -> None:
    """UTCDateTime refuses a naive datetime: the bind processor ran on the driver path too."""
    async with app.state.db.statement() as connection:
        with pytest.raises(ValueError, match="naive datetime"):
            await connection.execute(_DUE, {"now": datetime(2026, 1, 1)})


async def test_an_in_list_from_the_caller_is_refused(app: FastAPI) -> None:
    """Its length would be fixed by the first call's values: refused, not silently wrong."""
    ids = select(jobs.c.id).where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    async with app.state.db.statement() as connection:
        with pytest.raises(TypeError, match="IN list"):
            await connection.execute(ids, {"ids": []})


@pytest.mark.parametrize(("wait_for_flush", "synchronous_commit"), [(True, "on"), (False, "off")])
async def test_an_engine_may_commit_without_waiting_for_the_flush(
    settings: Settings, wait_for_flush: bool, synchronous_commit: str
) -> None:
    """The Celery worker's engine: its commits are job bookkeeping, repeated when lost."""
    engine = create_engine(settings, wait_for_flush=wait_for_flush)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW synchronous_commit")) == synchronous_commit
    finally:
        await engine.dispose()
