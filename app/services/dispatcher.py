"""The embedded job backend: runs due jobs inside the API process.

Woken at once by a commit that enqueued, and polling every JOB_POLL_SECONDS for retries that
fall due and for jobs enqueued by other processes. At most JOB_CONCURRENCY jobs run at a time.
"""

import asyncio
import logging
import os
import socket
import uuid
from datetime import timedelta

from app.core.config import Settings
from app.db.session import Database
from app.services import job_runner
from app.services.mailer import Mailer

logger = logging.getLogger(__name__)


def worker_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(self, db: Database, settings: Settings, mailer: Mailer) -> None:
        self.db = db
        self.settings = settings
        self.mailer = mailer
        self.worker = worker_name("embedded")
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[None], job_runner.ClaimedJob] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="job-dispatcher")

    async def _run(self) -> None:
        lease = timedelta(seconds=self.settings.job_lease_seconds)
        while not self._stopping:
            # Cleared before looking, so a wake during the claim is not lost.
            self._wake.clear()
            free = self.settings.job_concurrency - len(self._running)
            claimed: list[job_runner.ClaimedJob] = []
            if free > 0:
                try:
                    if await job_runner.has_work(self.db):
                        await job_runner.bury_abandoned(self.db)
                        claimed = await job_runner.claim(
                            self.db, worker=self.worker, limit=free, lease=lease
                        )
                except Exception:
                    logger.exception("could not claim jobs; trying again shortly")
            for job in claimed:
                task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
                self._running[task] = job
                task.add_done_callback(self._finished)
            if claimed and len(claimed) == free:
                continue  # there may be more due right now
            try:
                async with asyncio.timeout(self.settings.job_poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _execute(self, job: job_runner.ClaimedJob) -> None:
        try:
            await job_runner.execute(
                job, worker=self.worker, db=self.db, settings=self.settings, mailer=self.mailer
            )
        except Exception:
            # The outcome could not be recorded; the lease runs out and the job runs again.
            logger.exception("could not record the outcome of job %s", job.id)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()  # a slot is free

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, requeue the rest."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        running = dict(self._running)
        if not running:
            return
        _, unfinished = await asyncio.wait(
            running, timeout=self.settings.job_shutdown_grace_seconds
        )
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for task in unfinished:
            await job_runner.release(self.db, running[task], worker=self.worker)
        if unfinished:
            logger.info("returned %d unfinished job(s) to the queue", len(unfinished))
