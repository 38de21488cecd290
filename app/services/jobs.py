"""Durable jobs: enqueueing in the caller's transaction, and operator actions.

A job names a declared function (see job_registry) and carries ids, never objects. Enqueueing
is an INSERT in the caller's session: a rolled-back transaction enqueues nothing, a committed
one cannot lose its job. As it commits, the job is handed to whoever runs jobs in this process
(see outbox).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import context, tracing
from app.core.errors import JobNotRetryable, NotFound
from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import Database
from app.services import outbox, pagination
from app.services.job_registry import JobDefinition, Payload
from app.services.pagination import PageParams

logger = logging.getLogger(__name__)

# PostgreSQL: every dispatcher and relay listens here. A transaction that makes jobs due for
# other processes (an operator's retry, a producer outside the service) notifies it, and they
# look at once instead of at their next poll.
JOBS_DUE_CHANNEL = "jobs_due"
LISTEN_RETRY_S = 1.0  # after the listening connection was lost; the poll covers meanwhile


async def enqueue(
    session: AsyncSession, definition: JobDefinition[Payload], payload: Payload
) -> Job:
    """Add a job to the caller's transaction; it runs once that transaction commits."""
    job = Job(
        id=uuid.uuid4(),  # known before the INSERT: the dispatcher may take the job as it commits
        name=definition.name,
        payload=payload.model_dump(mode="json"),
        max_attempts=definition.max_attempts,
        request_id=context.request_id.get(),
        trace_context=tracing.carrier(),
    )
    session.add(job)
    return job


def list_order(*, status: JobStatus | None, name: str | None) -> pagination.Ordering:
    """Newest first (ix_jobs_created_at_id); under a filter, the order of that filter's own
    index (status|name, created_at, id), so a rare status is found there by a seek."""
    pinned = (Job.status,) if status is not None else (Job.name,) if name is not None else ()
    return pagination.Ordering((Job.created_at, Job.id), descending=True, pinned=pinned)


async def list_jobs(
    session: AsyncSession, *, status: JobStatus | None, name: str | None, page: PageParams
) -> tuple[list[Job], str | None]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if name is not None:
        query = query.where(Job.name == name)
    ordering = list_order(status=status, name=name)
    return await pagination.paginate(
        session, query, ordering=ordering, params=page, scope=("jobs", status, name)
    )


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
    await announce(session)
    await session.flush()
    return job


async def announce(session: AsyncSession) -> None:
    """Tell every process that runs jobs, when this transaction commits, that jobs are due."""
    outbox.jobs_due(session)
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"NOTIFY {JOBS_DUE_CHANNEL}"))


def listen_for_due_jobs(db: Database, wake: Callable[[], None]) -> asyncio.Task[None] | None:
    """PostgreSQL: call `wake` whenever another process announces due jobs, until the task is
    cancelled. Where nothing can listen (SQLite; a transaction pooler without a
    DATABASE_LISTEN_URL) the poll finds such jobs."""
    if not db.can_listen:
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
