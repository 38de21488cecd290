"""The Celery backend's relay: hands committed jobs to the broker.

It runs in every API process (publishing the jobs of a transaction as it commits) and stands
alone as `python -m app relay`. Requests never talk to the broker: if the broker is down, jobs
wait in the table and are published when it is back.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job
from app.db.session import Database
from app.services import job_runner, jobs

logger = logging.getLogger(__name__)

BATCH = 100
BROKER_DOWN_PAUSE_S = 1.0

Publish = Callable[[list[uuid.UUID]], None]


_UNPUBLISHED = or_(
    Job.published_at.is_(None),
    Job.published_at < bindparam("b_republish_before", type_=Job.published_at.type),
    and_(job_runner.abandoned(job_runner.NOW), Job.published_at < Job.locked_until),
)
# Built once: building a statement this size costs more CPU than running it.
_CLAIM_FOR_PUBLISH = (
    update(Job)
    .where(
        Job.id.in_(
            select(Job.id)
            .where(job_runner.due(job_runner.NOW), _UNPUBLISHED)
            .order_by(Job.run_at)
            .limit(job_runner.LIMIT)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(published_at=job_runner.NOW)
    .returning(Job.id)
)


async def claim_for_publish(
    db: Database, *, limit: int, republish_after: timedelta
) -> list[uuid.UUID]:
    """Due jobs the broker should carry: never published, published long ago with no worker
    taking them (a lost message), or abandoned by a worker that died since it took them."""
    now = utcnow()
    params = {"b_now": now, "b_republish_before": now - republish_after, "b_limit": limit}
    async with db.transaction() as session:
        return list(await session.scalars(_CLAIM_FOR_PUBLISH, params))


async def unpublish(db: Database, job_ids: list[uuid.UUID]) -> None:
    """The broker did not take these: let the relay try them again at once."""
    async with db.transaction() as session:
        await session.execute(update(Job).where(Job.id.in_(job_ids)).values(published_at=None))


class Relay:
    """Publishes jobs to Celery from an API process (or alone, as `python -m app relay`).

    Jobs enqueued in this process are stamped as published by their own transaction and
    published as it commits, with no statement to find them. Rounds over the table publish the
    rest: after a commit that only made jobs due again, and every JOB_POLL_SECONDS for retries
    that fall due, messages the broker lost and jobs enqueued elsewhere.
    """

    def __init__(self, db: Database, settings: Settings, publish: Publish) -> None:
        self.db = db
        self.settings = settings
        self.publish = publish
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self._committed: list[uuid.UUID] = []  # stamped by their transaction, not yet sent
        self._look = True  # a round over the table is due

    def wake(self) -> None:
        """Jobs may be due in the table."""
        self._look = True
        self._wake.set()

    def committing(self, session: AsyncSession, enqueued: list[Job]) -> Callable[[bool], None]:
        """Stamp the jobs of a committing transaction as published; they go to the broker as it
        commits. Should the process die first, they are published again after
        JOB_REPUBLISH_SECONDS, as a message the broker lost would be."""
        if self._stopping or not enqueued:
            return lambda committed: self.wake() if committed else None
        now = utcnow()
        for job in enqueued:
            job.published_at = now

        def committed(ok: bool) -> None:
            if ok:
                self._committed.extend(job.id for job in enqueued)
                self._wake.set()

        return committed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-relay")
        self._listener = jobs.listen_for_due_jobs(self.db, self.wake)

    async def _run(self) -> None:
        republish_after = timedelta(seconds=self.settings.job_republish_seconds)
        half_lease = self.settings.job_lease_seconds / 2
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while not self._stopping:
            self._wake.clear()
            published = 0
            try:
                await self._send_committed()
                if self._look:
                    self._look = False
                    if await job_runner.has_work(self.db):
                        # Every half lease: bury the last attempts that a dead worker abandoned.
                        if loop.time() >= next_sweep:
                            await job_runner.bury_abandoned(self.db)
                            next_sweep = loop.time() + half_lease
                        published = await self._publish_due(republish_after)
            except Exception:
                self._look = True
                logger.exception("could not relay jobs; trying again shortly")
            if published == BATCH:
                self._look = True  # there may be more
                continue
            try:
                async with asyncio.timeout(self.settings.job_poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                self._look = True
        await self._send_committed()

    async def _send_committed(self) -> None:
        if self._committed:
            job_ids, self._committed = self._committed, []
            await self._send(job_ids)

    async def _publish_due(self, republish_after: timedelta) -> int:
        job_ids = await claim_for_publish(self.db, limit=BATCH, republish_after=republish_after)
        if not job_ids or not await self._send(job_ids):
            return 0
        return len(job_ids)

    async def _send(self, job_ids: list[uuid.UUID]) -> bool:
        """Publish jobs stamped as published; False when the broker did not take them."""
        try:
            # Kombu is synchronous: publish on a worker thread, never on the event loop.
            await asyncio.to_thread(self.publish, job_ids)
        except Exception as exc:
            await unpublish(self.db, job_ids)
            self._look = True  # the next round publishes them again
            logger.warning("broker unavailable, %d job(s) wait in the table: %r", len(job_ids), exc)
            await asyncio.sleep(BROKER_DOWN_PAUSE_S)
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        await jobs.stop_listening(self._listener)
        self._wake.set()
        if self._task is not None:
            await self._task
