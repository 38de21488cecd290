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

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.base import utcnow
from app.db.errors import back_off
from app.db.models import Job
from app.db.session import Database
from app.services import job_store, jobs, outbox
from app.services.scheduler import Scheduler

logger = logging.getLogger(__name__)

BATCH = 100
BROKER_DOWN_PAUSE_S = 1.0

Publish = Callable[[list[uuid.UUID]], None]


class Relay:
    """Publishes jobs to Celery from an API process (or alone, as `python -m app relay`).

    Jobs enqueued in this process are stamped as published by their own transaction and
    published as it commits, with no statement to find them. Rounds over the table publish the
    rest: after a commit that only made jobs due again, and every JOB_POLL_SECONDS for retries
    that fall due, messages the broker lost and jobs enqueued elsewhere. Each time round, its
    scheduler enqueues the periodic jobs' ticks that fell due; a round publishes them.
    """

    def __init__(self, db: Database, settings: Settings, publish: Publish) -> None:
        self.db = db
        self.settings = settings
        self.publish = publish
        self.scheduler = Scheduler(db, settings)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._committed: list[uuid.UUID] = []  # stamped as published, not yet sent
        self._look = True  # a round over the table is due

    def wake(self) -> None:
        """Jobs may be due in the table."""
        self._look = True
        self._wake.set()

    def committing(self, session: Session, enqueued: list[Job]) -> Callable[[bool], None]:
        """Stamp the jobs of a committing transaction as published; they go to the broker as it
        commits. Should the process die first, they are published again after
        JOB_REPUBLISH_SECONDS, as a message the broker lost would be."""
        if self._stopping:
            return lambda committed: None  # left to another relay's round
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
        outbox.attach(self.db, self)
        self._listener = jobs.listen_for_due_jobs(self.db, self.wake)

    async def _run(self) -> None:
        republish_after = timedelta(seconds=self.settings.job_republish_seconds)
        half_lease = self.settings.job_lease_seconds / 2
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        failures = 0  # rounds in a row that failed
        while not self._stopping:
            self._wake.clear()
            published = 0
            try:
                await self._send_committed()
                if await self.scheduler.enqueue_due():
                    self._look = True
                if self._look:
                    self._look = False
                    if await job_store.has_work(self.db):
                        # Every half lease: bury the last attempts that a dead worker abandoned.
                        if loop.time() >= next_sweep:
                            await job_store.bury_abandoned(self.db)
                            next_sweep = loop.time() + half_lease
                        published = await self._publish_due(republish_after)
            except Exception as exc:
                # The database is away (a restart, a failover): look again within seconds of
                # its return, at a capped backoff, whatever wakes us meanwhile.
                self._look = True
                failures += 1
                await back_off(exc, failures, doing="relaying jobs", stop=self._stop, logger=logger)
                continue
            failures = 0
            if published == BATCH:
                self._look = True  # there may be more
                continue
            timeout = min(self.settings.job_poll_seconds, self.scheduler.seconds_until_due())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self._look = True
        await self._send_committed()

    async def _send_committed(self) -> None:
        if self._committed:
            job_ids, self._committed = self._committed, []
            await self._send(job_ids)

    async def _publish_due(self, republish_after: timedelta) -> int:
        job_ids = await job_store.claim_for_publish(
            self.db, limit=BATCH, republish_after=republish_after
        )
        if not job_ids or not await self._send(job_ids):
            return 0
        return len(job_ids)

    async def _send(self, job_ids: list[uuid.UUID]) -> bool:
        """Publish jobs stamped as published; False when the broker did not take them."""
        try:
            # Kombu is synchronous: publish on a worker thread, never on the event loop.
            await asyncio.to_thread(self.publish, job_ids)
        except Exception as exc:
            try:
                await job_store.unpublish(self.db, job_ids)
            except BaseException:
                # Stamped as published and not unstamped (the database is away too): they are
                # sent again next round, not left to the republish sweep.
                self._committed[:0] = job_ids
                raise
            self._look = True  # the next round publishes them again
            logger.warning("broker unavailable, %d job(s) wait in the table: %r", len(job_ids), exc)
            await asyncio.sleep(BROKER_DOWN_PAUSE_S)
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        outbox.detach(self.db, self)
        await jobs.stop_listening(self._listener)
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
