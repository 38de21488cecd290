"""Retention: what the service deletes once nobody needs it, so no table only grows.

The periodic job `prune_history` (every PRUNE_INTERVAL_SECONDS) and `python -m app prune` both
call `prune()`. It deletes succeeded jobs and their runs JOB_RETENTION_DAYS after they finished,
dead jobs DEAD_JOB_RETENTION_DAYS after, refresh tokens once expired or a day after they were
revoked, login sessions a day after they expired or ended (their tokens go with them), and
idempotency keys past IDEMPOTENCY_KEY_TTL_HOURS. A job that may still run (queued, running,
failed with attempts left) is never deleted, nor a periodic job's current tick (deleting it would
let the tick be enqueued again).

Deletes go in batches of at most `batch_size` rows, each its own short transaction, so no lock
is held for long and no transaction grows with the backlog.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Table, and_, delete, or_, select

from app.core import metrics
from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import IdempotencyKey, JobStatus, LoginSession, RefreshToken
from app.db.session import Database
from app.services import job_statements as sql
from app.services.job_registry import job, load_jobs
from app.services.scheduler import periodic

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000
# Ended sessions and revoked tokens are kept a day: a reused refresh token is still recognised
# (and revokes its session) for that long, and an operator can see what just happened.
ENDED_GRACE = timedelta(days=1)

jobs, job_runs = sql.jobs, sql.job_runs
sessions = cast(Table, LoginSession.__table__)
refresh_tokens = cast(Table, RefreshToken.__table__)
idempotency_keys = cast(Table, IdempotencyKey.__table__)


class NoPayload(BaseModel):
    pass


def _interval(settings: Settings) -> timedelta | None:
    return timedelta(seconds=settings.prune_interval_seconds)  # 0 turns it off


@dataclass
class Pruned:
    """Rows deleted, by table, and how many batches (transactions) it took."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def add(self, table: str, count: int) -> None:
        self.deleted[table] = self.deleted.get(table, 0) + count
        if count:
            metrics.PRUNED.labels(table).inc(count)


@job(max_attempts=3, every=_interval)
async def prune_history(payload: NoPayload, *, db: Database, settings: Settings) -> None:
    pruned = await prune(db, settings)
    logger.info("pruned history: %s", pruned.deleted)


def _finished_jobs(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """Succeeded past JOB_RETENTION_DAYS, dead (or out of attempts) past DEAD_JOB_RETENTION_DAYS,
    by when they were created and last changed (ix_jobs_status_created_at_id)."""
    kept = now - timedelta(days=settings.job_retention_days)
    dead_kept = now - timedelta(days=settings.dead_job_retention_days)
    succeeded = and_(
        jobs.c.status == JobStatus.SUCCEEDED, jobs.c.created_at < kept, jobs.c.updated_at < kept
    )
    buried = and_(
        or_(
            jobs.c.status == JobStatus.DEAD,
            and_(jobs.c.status == JobStatus.FAILED, jobs.c.attempts >= jobs.c.max_attempts),
        ),
        jobs.c.created_at < dead_kept,
        jobs.c.updated_at < dead_kept,
    )
    current_ticks = [
        or_(jobs.c.name != definition.name, jobs.c.tick_at.is_(None), jobs.c.tick_at < tick)
        for definition, schedule in periodic(load_jobs(), settings)
        for tick in [schedule.tick(now)]
    ]
    return and_(or_(succeeded, buried), *current_ticks)


async def prune(
    db: Database, settings: Settings, *, batch_size: int = BATCH_SIZE, now: datetime | None = None
) -> Pruned:
    """Delete what retention allows, in batches; what was deleted, by table."""
    now = now or utcnow()
    ended = now - ENDED_GRACE
    pruned = Pruned({"jobs": 0, "job_runs": 0})
    await _prune_jobs(db, _finished_jobs(settings, now), batch_size, pruned)
    targets: list[tuple[Table, Any, ColumnElement[bool]]] = [
        (
            sessions,
            sessions.c.id,
            or_(sessions.c.expires_at < ended, sessions.c.revoked_at < ended),
        ),
        (
            refresh_tokens,
            refresh_tokens.c.id,
            or_(refresh_tokens.c.expires_at < now, refresh_tokens.c.revoked_at < ended),
        ),
        (
            idempotency_keys,
            idempotency_keys.c.key,
            idempotency_keys.c.created_at < now - settings.idempotency_key_ttl,
        ),
    ]
    for table, key, condition in targets:
        await _prune_table(db, table, key, condition, batch_size, pruned)
    return pruned


async def _prune_jobs(
    db: Database, condition: ColumnElement[bool], batch_size: int, pruned: Pruned
) -> None:
    """Jobs and their runs. The batch's rows are locked as they are picked (FOR UPDATE; SQLite
    serialises writers), so an operator's retry in between cannot revive a job being deleted."""
    picked = select(jobs.c.id).where(condition).limit(batch_size).with_for_update(skip_locked=True)
    while True:
        # A transaction of its own per batch; Core statements on its connection, for rowcounts.
        async with db.transaction() as session:
            connection = await session.connection()
            ids = list(await connection.scalars(picked))
            if ids:
                runs = await connection.execute(delete(job_runs).where(job_runs.c.job_id.in_(ids)))
                gone = await connection.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        if not ids:
            return
        pruned.batches += 1
        pruned.add("job_runs", runs.rowcount)
        pruned.add("jobs", gone.rowcount)
        if len(ids) < batch_size:
            return


async def _prune_table(
    db: Database,
    table: Table,
    key: Any,
    condition: ColumnElement[bool],
    batch_size: int,
    pruned: Pruned,
) -> None:
    batch = delete(table).where(
        key.in_(select(key).where(condition).limit(batch_size).scalar_subquery()), condition
    )
    pruned.add(table.name, 0)
    while True:
        async with db.transaction() as session:
            connection = await session.connection()
            count = (await connection.execute(batch)).rowcount
        if not count:
            return
        pruned.batches += 1
        pruned.add(table.name, count)
        if count < batch_size:
            return
