"""The Celery backend's relay: hands committed jobs to the broker.

It runs in every API process (woken right after a commit that enqueued) and stands alone as
`python -m app relay`. Requests never talk to the broker: if the broker is down, jobs wait in
the table and are published when it is back.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job
from app.db.session import Database
from app.services import job_runner

logger = logging.getLogger(__name__)

BATCH = 100
BROKER_DOWN_PAUSE_S = 1.0

Publish = Callable[[list[uuid.UUID]], None]


async def claim_for_publish(
    db: Database, *, limit: int, republish_after: timedelta
) -> list[uuid.UUID]:
    """Due jobs the broker should carry: never published, published long ago with no worker
    taking them (a lost message), or abandoned by a worker that died since it took them."""
    now = utcnow()
    unpublished = or_(
        Job.published_at.is_(None),
        Job.published_at < now - republish_after,
        and_(job_runner.abandoned(now), Job.published_at < Job.locked_until),
    )
    candidates = (
        select(Job.id)
        .where(job_runner.due(now), unpublished)
        .order_by(Job.run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with db.transaction() as session:
        rows = await session.scalars(
            update(Job)
            .where(Job.id.in_(candidates.scalar_subquery()))
            .values(published_at=now)
            .returning(Job.id)
        )
        return list(rows)


async def unpublish(db: Database, job_ids: list[uuid.UUID]) -> None:
    """The broker did not take these: let the relay try them again at once."""
    async with db.transaction() as session:
        await session.execute(update(Job).where(Job.id.in_(job_ids)).values(published_at=None))


class Relay:
    def __init__(self, db: Database, settings: Settings, publish: Publish) -> None:
        self.db = db
        self.settings = settings
        self.publish = publish
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def committing(self, session: AsyncSession, enqueued: list[Job]) -> Callable[[bool], None]:
        """Publish the jobs of a transaction as soon as it commits."""
        return lambda committed: self.wake() if committed else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-relay")

    async def _run(self) -> None:
        republish_after = timedelta(seconds=self.settings.job_republish_seconds)
        while not self._stopping:
            self._wake.clear()
            published = 0
            try:
                if await job_runner.has_work(self.db):
                    await job_runner.bury_abandoned(self.db)
                    published = await self._publish_due(republish_after)
            except Exception:
                logger.exception("could not relay jobs; trying again shortly")
            if published == BATCH:
                continue
            try:
                async with asyncio.timeout(self.settings.job_poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _publish_due(self, republish_after: timedelta) -> int:
        job_ids = await claim_for_publish(self.db, limit=BATCH, republish_after=republish_after)
        if not job_ids:
            return 0
        try:
            # Kombu is synchronous: publish on a worker thread, never on the event loop.
            await asyncio.to_thread(self.publish, job_ids)
        except Exception as exc:
            await unpublish(self.db, job_ids)
            logger.warning("broker unavailable, %d job(s) wait in the table: %r", len(job_ids), exc)
            await asyncio.sleep(BROKER_DOWN_PAUSE_S)
            return 0
        return len(job_ids)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
