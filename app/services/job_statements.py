"""The SQL of job bookkeeping, built once: claims, outcomes, burial and the relay's claim.

Plain SQLAlchemy Core over the tables, not the mapped classes: claims and outcomes are bulk
statements, and the ORM's bulk machinery costs more CPU than the statements themselves.
Building a statement this size also costs more than running it, hence once, here. Their bind
parameters are named `b_*` and shared: `NOW`, `LIMIT`, `WORKER` ...
"""

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
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.sql import Executable, Select

from app.db.models import Job, JobRun, JobStatus

jobs = cast(Table, Job.__table__)
job_runs = cast(Table, JobRun.__table__)

# How last_error starts for a job whose name the process that claimed it does not know.
UNKNOWN_NAME_ERROR = "UnknownJob:"

NOW = bindparam("b_now", type_=jobs.c.run_at.type)
LIMIT = bindparam("b_limit", type_=Integer)
WORKER = bindparam("b_worker", type_=jobs.c.locked_by.type)
JOB_ID = bindparam("b_job_id", type_=jobs.c.id.type)


def status_in(*statuses: JobStatus) -> ColumnElement[bool]:
    """The statuses are written into the SQL as constants, not bound: only then can the generic
    plan that PostgreSQL caches for a prepared statement use the partial index of pending jobs,
    or an index by status, instead of scanning the whole table, every finished job included.
    Constants of our own enum, so quoting them is safe; no per-execution rendering either."""
    return jobs.c.status.in_([literal_column(f"'{status.value}'") for status in statuses])


def pending(now: ColumnElement[Any]) -> ColumnElement[bool]:
    """Queued or failed, and its time has come (ix_jobs_pending_run_at)."""
    return and_(status_in(JobStatus.QUEUED, JobStatus.FAILED), jobs.c.run_at <= now)


def abandoned(now: ColumnElement[Any]) -> ColumnElement[bool]:
    """Running, but the lease ran out: its process died."""
    return and_(status_in(JobStatus.RUNNING), jobs.c.locked_until < now)


_RETRIES_LEFT = jobs.c.attempts < jobs.c.max_attempts


def due(now: ColumnElement[Any]) -> ColumnElement[bool]:
    return and_(or_(pending(now), abandoned(now)), _RETRIES_LEFT)


# The idle poll. Abandoned last attempts count too: they are to be buried.
HAS_WORK = select(exists().where(or_(pending(NOW), abandoned(NOW))))


def _claim(candidates: Select[Any], *, with_runs: bool) -> Executable:
    take = (
        update(jobs)
        .where(jobs.c.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()))
        .values(
            status=JobStatus.RUNNING,
            attempts=jobs.c.attempts + 1,
            locked_by=WORKER,
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
            jobs.c.trace_context,
        )
    )
    if not with_runs:
        return take
    # PostgreSQL: one statement, so one round trip; the runs are inserted by a CTE of the claim.
    claimed = take.cte("claimed")
    runs = insert(job_runs).from_select(
        ["id", "job_id", "attempt", "worker", "started_at"],
        select(func.gen_random_uuid(), claimed.c.id, claimed.c.attempts, WORKER, NOW),
    )
    return select(claimed).add_cte(runs.cte("runs"))


# What a claim picks from, each served by an index: the next pending jobs in the order they
# fall due (ix_jobs_pending_run_at, read only as far as the limit, however long the backlog);
# jobs whose lease ran out; or one job by id (a Celery delivery).
_CANDIDATES = {
    "pending": select(jobs.c.id)
    .where(pending(NOW), _RETRIES_LEFT)
    .order_by(jobs.c.run_at)
    .limit(LIMIT),
    "abandoned": select(jobs.c.id).where(abandoned(NOW), _RETRIES_LEFT).limit(LIMIT),
    "one": select(jobs.c.id).where(due(NOW), jobs.c.id == JOB_ID).limit(LIMIT),
}
# CLAIM[kind, with_runs]: with_runs on PostgreSQL, where the claim inserts its runs itself.
CLAIM = {
    (kind, with_runs): _claim(candidates, with_runs=with_runs)
    for kind, candidates in _CANDIDATES.items()
    for with_runs in (False, True)
}

# Outcomes, written in bulk: one executemany per table, whatever the number of jobs.
_error = bindparam("b_error", type_=jobs.c.last_error.type)
_retry_at = bindparam("b_run_at", type_=jobs.c.run_at.type)
SETTLE = (
    update(jobs)
    .where(jobs.c.id == JOB_ID, jobs.c.locked_by == WORKER, jobs.c.status == JobStatus.RUNNING)
    .values(
        status=bindparam("b_status", type_=jobs.c.status.type),
        # An attempt that does not count (a job name unknown to the process) is given back.
        attempts=jobs.c.attempts - bindparam("b_uncounted", type_=Integer),
        locked_by=None,
        locked_until=None,
        updated_at=NOW,
        last_error=func.coalesce(_error, jobs.c.last_error),
        # A retry falls due later and must be published again; other outcomes keep both.
        run_at=func.coalesce(_retry_at, jobs.c.run_at),
        published_at=case((_retry_at.is_(None), jobs.c.published_at), else_=None),
    )
)
FINISH_RUN = (
    update(job_runs)
    .where(
        job_runs.c.job_id == JOB_ID,
        job_runs.c.attempt == bindparam("b_attempt"),
        job_runs.c.worker == WORKER,
        # An attempt given back is claimed again under the same number, by the same worker too.
        job_runs.c.finished_at.is_(None),
    )
    .values(
        finished_at=bindparam("b_now", type_=job_runs.c.finished_at.type),
        outcome=bindparam("b_outcome", type_=job_runs.c.outcome.type),
        error=_error,
    )
)
# PostgreSQL runs both updates as one statement (a data-modifying CTE).
SETTLE_AND_FINISH_RUN = FINISH_RUN.add_cte(SETTLE.cte("settled"))

# An interrupted attempt goes back to the queue, uncounted.
RELEASE = (
    update(jobs)
    .where(jobs.c.id == JOB_ID, jobs.c.locked_by == WORKER, jobs.c.status == JobStatus.RUNNING)
    .values(
        status=JobStatus.QUEUED,
        attempts=jobs.c.attempts - 1,
        locked_by=None,
        locked_until=None,
        published_at=None,
        updated_at=NOW,
    )
)

BURY_ABANDONED = (
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

# The relay: due jobs never published, published long ago with no worker taking them (a lost
# message), or abandoned by a worker that died since it took them.
_UNPUBLISHED = or_(
    jobs.c.published_at.is_(None),
    jobs.c.published_at < bindparam("b_republish_before", type_=jobs.c.published_at.type),
    and_(abandoned(NOW), jobs.c.published_at < jobs.c.locked_until),
)
CLAIM_FOR_PUBLISH = (
    update(jobs)
    .where(
        jobs.c.id.in_(
            select(jobs.c.id)
            .where(due(NOW), _UNPUBLISHED)
            .order_by(jobs.c.run_at)
            .limit(LIMIT)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(published_at=NOW)
    .returning(jobs.c.id)
)
UNPUBLISH = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("b_job_ids", expanding=True)))
    .values(published_at=None)
)
