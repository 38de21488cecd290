"""Durable jobs: definitions, enqueueing in the caller's transaction, and operator actions.

A job names a registered function and carries ids, never objects. Enqueueing is an INSERT in
the caller's session: a rolled-back transaction enqueues nothing, a committed one cannot lose
its job. Database.transaction() tells whoever runs jobs in this process as such a transaction
commits: the embedded dispatcher takes the jobs it can start at once (see Dispatcher.committing).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import context
from app.core.errors import JobNotRetryable, NotFound
from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import JOBS_ENQUEUED, Database

logger = logging.getLogger(__name__)

# PostgreSQL: every dispatcher and relay listens here. A transaction that makes jobs due for
# other processes (an operator's retry, a producer outside the service) notifies it, and they
# look at once instead of at their next poll.
JOBS_DUE_CHANNEL = "jobs_due"
LISTEN_RETRY_S = 1.0  # after the listening connection was lost; the poll covers meanwhile


@dataclass(frozen=True)
class JobDefinition:
    name: str
    run: Callable[..., Awaitable[None]]
    max_attempts: int = 8


@dataclass
class Registry:
    definitions: dict[str, JobDefinition] = field(default_factory=dict)

    def job(
        self, *, max_attempts: int = 8
    ) -> Callable[[Callable[..., Awaitable[None]]], JobDefinition]:
        """Register an async function `(ctx: JobContext, **payload)` as a job."""

        def register(run: Callable[..., Awaitable[None]]) -> JobDefinition:
            definition = JobDefinition(run.__name__, run, max_attempts)
            if definition.name in self.definitions:
                raise ValueError(f"job {definition.name!r} is registered twice")
            self.definitions[definition.name] = definition
            return definition

        return register

    def get(self, name: str) -> JobDefinition | None:
        return self.definitions.get(name)


registry = Registry()


async def enqueue(session: AsyncSession, definition: JobDefinition, **payload: Any) -> Job:
    """Add a job to the caller's transaction; it runs once that transaction commits."""
    job = Job(
        id=uuid.uuid4(),  # known before the INSERT: the dispatcher may take the job as it commits
        name=definition.name,
        payload=payload,
        max_attempts=definition.max_attempts,
        request_id=context.request_id.get(),
    )
    session.add(job)
    session.info.setdefault(JOBS_ENQUEUED, []).append(job)
    return job


async def list_page(
    session: AsyncSession, *, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = await session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return list(jobs), total or 0


async def get(session: AsyncSession, job_id: uuid.UUID) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFound("Job not found")
    return job


async def retry(session: AsyncSession, job_id: uuid.UUID) -> Job:
    """Queue a failed or dead job to run now, with a fresh set of attempts."""
    job = await session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise NotFound("Job not found")
    if job.status not in (JobStatus.FAILED, JobStatus.DEAD):
        raise JobNotRetryable(f"Only failed or dead jobs can be retried; this one is {job.status}")
    job.status = JobStatus.QUEUED
    job.attempts = 0
    job.run_at = utcnow()
    job.published_at = None
    session.info.setdefault(JOBS_ENQUEUED, [])  # due now: whoever runs jobs looks again
    await announce(session)
    await session.flush()
    return job


async def announce(session: AsyncSession) -> None:
    """Tell every process that runs jobs, when this transaction commits, that jobs are due."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"NOTIFY {JOBS_DUE_CHANNEL}"))


def listen_for_due_jobs(db: Database, wake: Callable[[], None]) -> asyncio.Task[None] | None:
    """PostgreSQL: call `wake` whenever another process announces due jobs, until the task is
    cancelled. Elsewhere there is nothing to listen to: the poll finds such jobs."""
    if not db.is_postgresql:
        return None
    return asyncio.create_task(_listen(db, wake), name="jobs-due-listener")


async def _listen(db: Database, wake: Callable[[], None]) -> None:
    while True:
        try:
            async with db.listen(JOBS_DUE_CHANNEL, wake) as lost:
                wake()  # what was announced while nobody listened
                await lost
        except Exception as exc:
            logger.warning("not listening for due jobs, trying again shortly: %r", exc)
        await asyncio.sleep(LISTEN_RETRY_S)  # lost, or never had: connect again


async def stop_listening(listener: asyncio.Task[None] | None) -> None:
    if listener is not None:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status.value: count for status, count in rows})
    return counts
