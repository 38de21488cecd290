"""Recording jobs' lives in the table: claims, outcomes, releases, burial and the relay's stamps.

A claim is one UPDATE ... RETURNING over due rows picked with FOR UPDATE SKIP LOCKED, so
several processes on one PostgreSQL never take the same job; SQLite serialises writers, which
gives the same guarantee. A claim takes a lease; a job whose lease ran out (its process died) is
due again. Every attempt is recorded in job_runs. The statements run on `Database.statement()`
(autocommit on PostgreSQL, one transaction on SQLite): see job_statements for the SQL.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobRun, JobStatus
from app.db.session import Database
from app.services import job_statements as sql


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    name: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    request_id: str | None
    trace_context: dict[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, to be recorded on the job row and its run."""

    job: ClaimedJob
    status: JobStatus
    finished_at: datetime
    error: str | None = None
    retry_in: timedelta | None = None
    # False: the attempt is given back (nothing ran: the job's name is unknown to the process).
    counted: bool = True


async def has_work(db: Database) -> bool:
    """A cheap autocommit check, so an idle poll never takes a write lock."""
    async with db.engine.connect() as connection:
        return bool(await connection.scalar(sql.HAS_WORK, {"b_now": utcnow()}))


async def claim(
    db: Database, *, worker: str, limit: int, lease: timedelta, job_id: uuid.UUID | None = None
) -> list[ClaimedJob]:
    """Take up to `limit` due jobs (or the one given) for `worker`, each with a lease."""
    async with db.statement() as connection:
        return await claim_due(
            connection,
            worker=worker,
            limit=limit,
            lease=lease,
            job_id=job_id,
            include_abandoned=True,
        )


async def claim_due(
    connection: AsyncConnection,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    job_id: uuid.UUID | None = None,
    include_abandoned: bool = False,
) -> list[ClaimedJob]:
    """claim() on the caller's connection; with `include_abandoned`, jobs whose lease ran out
    come first."""
    if job_id is not None:
        return await _claim(connection, "one", worker=worker, limit=1, lease=lease, job_id=job_id)
    claimed = []
    if include_abandoned:
        claimed = await _claim(connection, "abandoned", worker=worker, limit=limit, lease=lease)
    if len(claimed) < limit:
        claimed += await _claim(
            connection, "pending", worker=worker, limit=limit - len(claimed), lease=lease
        )
    return claimed


async def _claim(
    connection: AsyncConnection,
    kind: str,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    job_id: uuid.UUID | None = None,
) -> list[ClaimedJob]:
    now = utcnow()
    params = {"b_now": now, "b_limit": limit, "b_worker": worker, "b_locked_until": now + lease}
    if job_id is not None:
        params["b_job_id"] = job_id
    postgresql = connection.dialect.name == "postgresql"
    rows = await connection.execute(sql.CLAIM[kind, postgresql], params)
    claimed = [ClaimedJob(*row) for row in rows]
    if claimed and not postgresql:
        await connection.execute(
            insert(sql.job_runs),
            [
                {"job_id": job.id, "attempt": job.attempts, "worker": worker, "started_at": now}
                for job in claimed
            ],
        )
    return claimed


def claim_enqueued(
    session: Session, job: Job, *, worker: str, lease: timedelta, now: datetime
) -> ClaimedJob:
    """Claim a job that its own transaction is about to commit: it is written as running, with
    its lease and its first run, so no claim statement has to find it afterwards."""
    if job.id is None:  # added as a bare Job(), not through enqueue(): its run needs the id now
        job.id = uuid.uuid4()
    job.status = JobStatus.RUNNING
    job.attempts = 1
    job.locked_by = worker
    job.locked_until = now + lease
    job.run_at = job.updated_at = now
    session.add(JobRun(job_id=job.id, attempt=1, worker=worker, started_at=now))
    return ClaimedJob(
        job.id, job.name, job.payload, 1, job.max_attempts, job.request_id, job.trace_context
    )


async def record(connection: AsyncConnection, outcomes: list[Outcome], *, worker: str) -> None:
    """Write outcomes, unless a lease was lost to another worker."""
    if not outcomes:
        return
    params = [
        {
            "b_job_id": outcome.job.id,
            "b_attempt": outcome.job.attempts,
            "b_worker": worker,
            "b_status": outcome.status,
            "b_outcome": outcome.status.value,
            "b_now": outcome.finished_at,
            "b_error": outcome.error,
            "b_uncounted": 0 if outcome.counted else 1,
            "b_run_at": (
                outcome.finished_at + outcome.retry_in if outcome.retry_in is not None else None
            ),
        }
        for outcome in outcomes
    ]
    if connection.dialect.name == "postgresql":
        # One outcome (a Celery delivery, a quiet dispatcher): a plain execution, cheaper
        # than the executemany machinery.
        await connection.execute(
            sql.SETTLE_AND_FINISH_RUN, params if len(params) > 1 else params[0]
        )
        return
    await connection.execute(sql.SETTLE, params)
    await connection.execute(sql.FINISH_RUN, params)


async def release(db: Database, job: ClaimedJob, *, worker: str) -> None:
    """Hand an interrupted job back to the queue; the attempt it did not finish is not counted."""
    params = {
        "b_job_id": job.id,
        "b_worker": worker,
        "b_now": utcnow(),
        "b_attempt": job.attempts,
        "b_outcome": "interrupted",
        "b_error": None,
    }
    async with db.statement() as connection:
        await connection.execute(sql.RELEASE, params)
        await connection.execute(sql.FINISH_RUN, params)


async def bury_abandoned(db: Database) -> None:
    """Jobs whose last allowed attempt lost its lease (the process died) are dead."""
    async with db.statement() as connection:
        await connection.execute(sql.BURY_ABANDONED, {"b_now": utcnow()})


async def claim_for_publish(
    db: Database, *, limit: int, republish_after: timedelta
) -> list[uuid.UUID]:
    """Stamp as published the due jobs the broker should carry (see CLAIM_FOR_PUBLISH)."""
    now = utcnow()
    params = {"b_now": now, "b_republish_before": now - republish_after, "b_limit": limit}
    async with db.statement() as connection:
        return list(await connection.scalars(sql.CLAIM_FOR_PUBLISH, params))


async def unpublish(db: Database, job_ids: list[uuid.UUID]) -> None:
    """The broker did not take these: let the relay try them again at once."""
    async with db.statement() as connection:
        await connection.execute(sql.UNPUBLISH, {"b_job_ids": job_ids})
