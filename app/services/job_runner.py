"""Claiming, running and settling jobs: the code every backend shares.

A claim is one UPDATE ... RETURNING over due rows picked with FOR UPDATE SKIP LOCKED, so
several processes on one PostgreSQL never take the same job; SQLite serialises writers, which
gives the same guarantee. A claim takes a lease; a job whose lease ran out (its process died) is
due again. Every attempt is recorded in job_runs.
"""

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Executable, Select

from app.core import metrics
from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobRun, JobStatus
from app.db.session import Database, DriverConnection
from app.services.jobs import registry
from app.services.mailer import Mailer

logger = logging.getLogger(__name__)

# The tables, not the mapped classes: claims and outcomes are plain bulk statements, and
# going through the ORM's bulk machinery cost more CPU than the statements themselves.
jobs = cast(Table, Job.__table__)
job_runs = cast(Table, JobRun.__table__)


@dataclass(frozen=True)
class JobContext:
    """What a running job gets besides its payload."""

    job_id: uuid.UUID
    attempt: int
    request_id: str | None
    db: Database
    settings: Settings
    mailer: Mailer


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    name: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    request_id: str | None


# Claims and outcomes run on Database.statement() (the asyncpg driver in autocommit on
# PostgreSQL, one transaction on SQLite), or in the caller's ORM session.
Executor = AsyncSession | AsyncConnection | DriverConnection

# `now` is a value, or a bind parameter in the statements built once below.
Moment = datetime | ColumnElement[datetime]


def _status_in(*statuses: JobStatus) -> ColumnElement[bool]:
    """The statuses are written into the SQL, not bound: only then can the generic plan that
    PostgreSQL caches for a prepared statement use the partial index of pending jobs, or an
    index by status, instead of scanning the whole table, every finished job included."""
    values = bindparam(
        "status",
        list(statuses),
        type_=jobs.c.status.type,
        unique=True,
        expanding=True,
        literal_execute=True,
    )
    return jobs.c.status.in_(values)


def pending(now: Moment) -> ColumnElement[bool]:
    """Queued or failed, and its time has come (ix_jobs_pending_run_at)."""
    return and_(_status_in(JobStatus.QUEUED, JobStatus.FAILED), jobs.c.run_at <= now)


def abandoned(now: Moment) -> ColumnElement[bool]:
    """Running, but the lease ran out: its process died."""
    return and_(_status_in(JobStatus.RUNNING), jobs.c.locked_until < now)


def due(now: Moment) -> ColumnElement[bool]:
    return and_(or_(pending(now), abandoned(now)), jobs.c.attempts < jobs.c.max_attempts)


# Bind parameters of the statements built once, here and in the relay.
NOW = bindparam("b_now", type_=jobs.c.run_at.type)
LIMIT = bindparam("b_limit", type_=Integer)
# Abandoned last attempts count too: they are to be buried.
_HAS_WORK = select(exists().where(or_(pending(NOW), abandoned(NOW))))


async def has_work(db: Database) -> bool:
    """A cheap autocommit check, so an idle poll never takes a write lock."""
    async with db.read_sessionmaker() as session:
        return bool(await session.scalar(_HAS_WORK, {"b_now": utcnow()}))


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


def _claim_statement(candidates: Select[Any], *, with_runs: bool) -> Executable:
    worker = bindparam("b_worker", type_=jobs.c.locked_by.type)
    take = (
        update(jobs)
        .where(jobs.c.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()))
        .values(
            status=JobStatus.RUNNING,
            attempts=jobs.c.attempts + 1,
            locked_by=worker,
            locked_until=bindparam("b_locked_until", type_=jobs.c.locked_until.type),
            updated_at=NOW,
        )
        .returning(
            jobs.c.id,
            jobs.c.name,
            jobs.c.payload,
            jobs.c.attempts,
            jobs.c.max_attempts,
            jobs.c.request_id,
        )
    )
    if not with_runs:
        return take
    # PostgreSQL: one statement, so one round trip; the runs are inserted by a CTE of the claim.
    claimed = take.cte("claimed")
    runs = insert(job_runs).from_select(
        ["id", "job_id", "attempt", "worker", "started_at"],
        select(func.gen_random_uuid(), claimed.c.id, claimed.c.attempts, worker, NOW),
    )
    return select(claimed).add_cte(runs.cte("runs"))


_RETRIES_LEFT = jobs.c.attempts < jobs.c.max_attempts
# What a claim picks from, each served by an index: the next pending jobs in the order they
# fall due (ix_jobs_pending_run_at, read only as far as the limit, however long the backlog);
# jobs whose lease ran out; or one job by id (a Celery delivery).
_CANDIDATES = {
    "pending": select(jobs.c.id)
    .where(pending(NOW), _RETRIES_LEFT)
    .order_by(jobs.c.run_at)
    .limit(LIMIT),
    "abandoned": select(jobs.c.id).where(abandoned(NOW), _RETRIES_LEFT).limit(LIMIT),
    "one": select(jobs.c.id)
    .where(due(NOW), jobs.c.id == bindparam("b_job_id", type_=jobs.c.id.type))
    .limit(LIMIT),
}
# Built once per variant: building a statement this size costs more CPU than running it.
_CLAIM = {
    (kind, with_runs): _claim_statement(candidates, with_runs=with_runs)
    for kind, candidates in _CANDIDATES.items()
    for with_runs in (False, True)
}


async def claim_due(
    session: Executor,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    job_id: uuid.UUID | None = None,
    include_abandoned: bool = False,
) -> list[ClaimedJob]:
    """claim() in the caller's transaction; with `include_abandoned`, jobs whose lease ran out
    come first."""
    if job_id is not None:
        return await _claim(session, "one", worker=worker, limit=1, lease=lease, job_id=job_id)
    claimed = []
    if include_abandoned:
        claimed = await _claim(session, "abandoned", worker=worker, limit=limit, lease=lease)
    if len(claimed) < limit:
        claimed += await _claim(
            session, "pending", worker=worker, limit=limit - len(claimed), lease=lease
        )
    return claimed


async def _claim(
    session: Executor,
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
    postgresql = _is_postgresql(session)
    rows = await session.execute(_CLAIM[kind, postgresql], params)
    claimed = [ClaimedJob(*row) for row in rows]
    if claimed and not postgresql:
        await session.execute(
            insert(job_runs),
            [
                {"job_id": job.id, "attempt": job.attempts, "worker": worker, "started_at": now}
                for job in claimed
            ],
        )
    return claimed


def claim_enqueued(
    session: AsyncSession, job: Job, *, worker: str, lease: timedelta, now: datetime
) -> ClaimedJob:
    """Claim a job that its own transaction is about to commit: it is written as running, with
    its lease and its first run, so no claim statement has to find it afterwards."""
    job.status = JobStatus.RUNNING
    job.attempts = 1
    job.locked_by = worker
    job.locked_until = now + lease
    job.run_at = job.updated_at = now
    session.add(JobRun(job_id=job.id, attempt=1, worker=worker, started_at=now))
    return ClaimedJob(job.id, job.name, job.payload, 1, job.max_attempts, job.request_id)


def _is_postgresql(executor: Executor) -> bool:
    bind = executor.get_bind() if isinstance(executor, AsyncSession) else executor
    return bind.dialect.name == "postgresql"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, to be recorded on the job row and its run."""

    job: ClaimedJob
    status: JobStatus
    finished_at: datetime
    error: str | None = None
    retry_in: timedelta | None = None


async def execute(
    job: ClaimedJob, *, worker: str, db: Database, settings: Settings, mailer: Mailer
) -> None:
    """Run one claimed job and record how it ended."""
    outcome = await run(job, db=db, settings=settings, mailer=mailer)
    async with db.statement() as connection:
        await record(connection, [outcome], worker=worker)


async def run(job: ClaimedJob, *, db: Database, settings: Settings, mailer: Mailer) -> Outcome:
    """Run one claimed job and say how it ended. Never raises but for cancellation."""
    definition = registry.get(job.name)
    ctx = JobContext(job.id, job.attempts, job.request_id, db, settings, mailer)
    # The request id ties the job's log lines to the request that enqueued it.
    label = f"{job.name} {job.id} attempt {job.attempts} [request {job.request_id or '-'}]"
    started = time.perf_counter()
    try:
        if definition is None:
            raise LookupError(f"no job named {job.name!r} is registered")
        # Finish well inside the lease, or another process would take the job over.
        async with asyncio.timeout(settings.job_lease_seconds / 2):
            await definition.run(ctx, **job.payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        dead = job.attempts >= job.max_attempts or definition is None
        logger.warning("job %s failed%s: %s", label, " for good" if dead else "", error)
        status = JobStatus.DEAD if dead else JobStatus.FAILED
        metrics.JOB_SECONDS.labels(job.name, status.value).observe(time.perf_counter() - started)
        if dead:
            return Outcome(job, status, utcnow(), error)
        metrics.JOB_RETRIES.labels(job.name).inc()
        return Outcome(job, status, utcnow(), error, backoff(job.attempts, settings))
    logger.info("job %s succeeded", label)
    metrics.JOB_SECONDS.labels(job.name, "succeeded").observe(time.perf_counter() - started)
    return Outcome(job, JobStatus.SUCCEEDED, utcnow())


def backoff(attempt: int, settings: Settings) -> timedelta:
    """Exponential backoff with jitter, so retries of many failed jobs do not arrive together."""
    ceiling = min(
        settings.job_retry_base_seconds * 2 ** (attempt - 1), settings.job_retry_max_seconds
    )
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


# Outcomes are written in bulk: one executemany per table, whatever the number of jobs.
_error = bindparam("b_error", type_=jobs.c.last_error.type)
_retry_at = bindparam("b_run_at", type_=jobs.c.run_at.type)
_SETTLE = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_job_id"),
        jobs.c.locked_by == bindparam("b_worker"),
        jobs.c.status == JobStatus.RUNNING,
    )
    .values(
        status=bindparam("b_status", type_=jobs.c.status.type),
        locked_by=None,
        locked_until=None,
        updated_at=bindparam("b_now", type_=jobs.c.updated_at.type),
        last_error=func.coalesce(_error, jobs.c.last_error),
        # A retry falls due later and must be published again; other outcomes keep both.
        run_at=func.coalesce(_retry_at, jobs.c.run_at),
        published_at=case((_retry_at.is_(None), jobs.c.published_at), else_=None),
    )
)
_FINISH_RUN = (
    update(job_runs)
    .where(
        job_runs.c.job_id == bindparam("b_job_id"),
        job_runs.c.attempt == bindparam("b_attempt"),
        job_runs.c.worker == bindparam("b_worker"),
    )
    .values(
        finished_at=bindparam("b_now", type_=job_runs.c.finished_at.type),
        outcome=bindparam("b_outcome", type_=job_runs.c.outcome.type),
        error=_error,
    )
)
# PostgreSQL runs both updates as one statement (a data-modifying CTE).
_SETTLE_AND_FINISH_RUN = _FINISH_RUN.add_cte(_SETTLE.cte("settled"))


async def record(session: Executor, outcomes: list[Outcome], *, worker: str) -> None:
    """Write outcomes in the caller's transaction, unless a lease was lost to another worker."""
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
            "b_run_at": (
                outcome.finished_at + outcome.retry_in if outcome.retry_in is not None else None
            ),
        }
        for outcome in outcomes
    ]
    if _is_postgresql(session):
        # One outcome (a Celery delivery, a quiet dispatcher): a plain execution, cheaper
        # than the executemany machinery.
        await session.execute(_SETTLE_AND_FINISH_RUN, params if len(params) > 1 else params[0])
        return
    await session.execute(_SETTLE, params)
    await session.execute(_FINISH_RUN, params)


async def release(db: Database, job: ClaimedJob, *, worker: str) -> None:
    """Hand an interrupted job back to the queue; the attempt it did not finish is not counted."""
    now = utcnow()
    async with db.transaction() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job.id, Job.locked_by == worker, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,
                locked_by=None,
                locked_until=None,
                published_at=None,
                updated_at=now,
            )
        )
        await _finish_run(session, job, worker=worker, outcome="interrupted", error=None, now=now)


async def _finish_run(
    session: AsyncSession,
    job: ClaimedJob,
    *,
    worker: str,
    outcome: str,
    error: str | None,
    now: datetime,
) -> None:
    await session.execute(
        update(JobRun)
        .where(JobRun.job_id == job.id, JobRun.attempt == job.attempts, JobRun.worker == worker)
        .values(finished_at=now, outcome=outcome, error=error)
    )


_BURY_ABANDONED = (
    update(jobs)
    .where(abandoned(NOW), jobs.c.attempts >= jobs.c.max_attempts)
    .values(
        status=JobStatus.DEAD,
        last_error="the worker running the last attempt stopped answering",
        locked_by=None,
        locked_until=None,
        updated_at=NOW,
    )
)


async def bury_abandoned(db: Database) -> None:
    """Jobs whose last allowed attempt lost its lease (the process died) are dead."""
    async with db.transaction() as session:
        await session.execute(_BURY_ABANDONED, {"b_now": utcnow()})


async def run_one(
    job_id: uuid.UUID, *, worker: str, db: Database, settings: Settings, mailer: Mailer
) -> bool:
    """Claim and run one job by id (a Celery delivery); False when it is not ours to run.

    A duplicate delivery, or one for a job that is running elsewhere or already done, finds
    nothing to claim and does nothing.
    """
    lease = timedelta(seconds=settings.job_lease_seconds)
    if not db.is_postgresql:
        # Claim and outcome are writing transactions, never held while the job runs: on
        # SQLite that would lock out every other writer.
        claimed = await claim(db, worker=worker, limit=1, lease=lease, job_id=job_id)
        for job in claimed:
            await execute(job, worker=worker, db=db, settings=settings, mailer=mailer)
        return bool(claimed)
    # One autocommit connection for both, idle while the job runs: a pool checkout less.
    async with db.statement() as connection:
        claimed = await claim_due(connection, worker=worker, limit=1, lease=lease, job_id=job_id)
        for job in claimed:
            outcome = await run(job, db=db, settings=settings, mailer=mailer)
            await record(connection, [outcome], worker=worker)
    return bool(claimed)
