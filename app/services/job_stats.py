"""Job gauges for /metrics: unfinished jobs by status, how late the oldest due job is, the
outbox backlog, the jobs that died lately, and the queued jobs whose name a process did not know.

Read through the jobs' indexes (status and run_at; pending by run_at), never over the finished
history, and at most once every MAX_AGE_S however many scrapers ask (single flight).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, literal, literal_column, select

from app.core.single_flight import SingleFlight
from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.session import Database
from app.services.job_statements import UNKNOWN_NAME_ERROR, jobs, pending, status_in

MAX_AGE_S = 5.0
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED)
# A job counts as recently dead for this long after it died (a retry takes it out at once).
DEAD_WINDOW = timedelta(hours=1)
# Only jobs whose last attempt fell due within this are looked at (ix_jobs_status_run_at), so
# the read is bounded by a day of dead jobs, not by DEAD_JOB_RETENTION_DAYS of them. A job that
# waited longer than this in the queue before dying is missed; the lag gauge showed that wait.
DEAD_DUE_WITHIN = timedelta(days=1)

# A job whose name the process does not know goes back to `queued`, due again later: it never
# dies, and its run_at keeps moving on. Those names are the ones no code here declares, whatever
# a producer wrote, and such jobs stay until someone acts: at most this many names get a
# series, the rest are summed under OTHER.
UNKNOWN_NAMES_SHOWN = 20
OTHER = "<other>"


@dataclass(frozen=True)
class JobStats:
    by_status: dict[str, int]
    # Since when the oldest pending job has been due; 0 when none is due.
    lag_seconds: float
    # Due jobs nobody has taken: the dispatcher has not claimed them, or the Celery relay has
    # not published them (the embedded dispatcher never publishes, so one count fits both).
    backlog: int
    # Jobs dead within DEAD_WINDOW, by job name.
    recently_dead: dict[str, int]
    # Queued jobs whose last attempt met a process that did not know their name, by job name
    # (at most UNKNOWN_NAMES_SHOWN names, then OTHER).
    unknown_names: dict[str, int]


def statements(now: datetime) -> dict[str, Select[Any]]:
    """The gauges' statements at `now`, statuses written as constants (job_statements.status_in)
    so that even PostgreSQL's generic plan of each reads an index, never the whole history."""
    by_status = (
        select(jobs.c.status, func.count()).where(status_in(*UNFINISHED)).group_by(jobs.c.status)
    )
    # The due part of ix_jobs_pending_run_at.
    due = select(
        func.min(jobs.c.run_at), func.count(case((jobs.c.published_at.is_(None), 1)))
    ).where(pending(literal(now, jobs.c.run_at.type)))
    recently_dead = (
        select(jobs.c.name, func.count())
        .where(
            status_in(JobStatus.DEAD),
            jobs.c.run_at > now - DEAD_DUE_WITHIN,
            jobs.c.updated_at > now - DEAD_WINDOW,
        )
        .group_by(jobs.c.name)
    )
    # Status and prefix are constants too: the index of unfinished jobs by status, not the history.
    unknown_names = (
        select(jobs.c.name, func.count())
        .where(
            status_in(JobStatus.QUEUED),
            jobs.c.last_error.like(literal_column(f"'{UNKNOWN_NAME_ERROR}%'")),
        )
        .group_by(jobs.c.name)
    )
    return {
        "by_status": by_status,
        "due": due,
        "recently_dead": recently_dead,
        "unknown_names": unknown_names,
    }


async def read(db: Database) -> JobStats:
    now = utcnow()
    sql = statements(now)
    async with db.transaction() as session:
        rows = await session.execute(sql["by_status"])
        by_status = {status.value: 0 for status in UNFINISHED}
        by_status.update({status.value: count for status, count in rows})
        due = (await session.execute(sql["due"])).one()
        dead = await session.execute(sql["recently_dead"])
        recently_dead = {name: count for name, count in dead}
        names = await session.execute(sql["unknown_names"])
        unknown = _bounded({name: count for name, count in names})
    oldest: datetime | None = due[0]
    lag = 0.0 if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds())
    return JobStats(by_status, lag, due[1], recently_dead, unknown)


def _bounded(by_name: dict[str, int]) -> dict[str, int]:
    """The UNKNOWN_NAMES_SHOWN names with the most jobs; the others' jobs summed under OTHER."""
    ranked = sorted(by_name.items(), key=lambda item: (-item[1], item[0]))
    shown = dict(ranked[:UNKNOWN_NAMES_SHOWN])
    rest = sum(count for _, count in ranked[UNKNOWN_NAMES_SHOWN:])
    return shown | {OTHER: rest} if rest else shown


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite: naive


def cached(db: Database) -> SingleFlight[JobStats]:
    return SingleFlight(lambda: read(db), max_age=MAX_AGE_S)
