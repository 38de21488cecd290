"""The embedded job backend: runs due jobs inside the API process.

A job enqueued in this process is claimed by the transaction that enqueues it, when a slot is
free, and starts as that transaction commits. Other jobs are claimed in rounds: woken by a
commit whose jobs could not all start and by every job that finishes, polling every
JOB_POLL_SECONDS for retries that fall due and for jobs enqueued by other processes. At most
JOB_CONCURRENCY jobs run at a time. Each round records the outcomes of the jobs that finished
since the last round and claims as many due jobs as there are free slots: two statements, each
atomic by itself (autocommit on PostgreSQL, one transaction on SQLite). Each time round, its
scheduler enqueues the periodic jobs' ticks that fell due (see scheduler).
"""

import asyncio
import logging
import os
import socket
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
from app.services.job_runner import JobRunner
from app.services.job_store import ClaimedJob, Outcome
from app.services.scheduler import Scheduler

logger = logging.getLogger(__name__)


def worker_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(self, db: Database, settings: Settings, runner: JobRunner | None = None) -> None:
        self.db = db
        self.settings = settings
        self.runner = runner or JobRunner(db, settings)
        self.worker = worker_name("embedded")
        self.scheduler = Scheduler(db, settings)
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[Outcome], ClaimedJob] = {}
        self._reserved = 0  # slots of jobs claimed by transactions still committing
        self._finished: list[Outcome] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        # False once a claim left slots free (nothing more was due) and nothing since then
        # can have made a job due: a round that only records outcomes then claims nothing.
        self._maybe_due = True

    def wake(self) -> None:
        """Jobs were committed."""
        self._maybe_due = True
        self._wake.set()

    def committing(self, session: Session, enqueued: list[Job]) -> Callable[[bool], None]:
        """Claim the jobs of a committing transaction that have a free slot; they start as it
        commits. Should the process die first, their lease runs out and they run elsewhere."""
        lease = timedelta(seconds=self.settings.job_lease_seconds)
        now = utcnow()
        claimed = [
            job_store.claim_enqueued(session, job, worker=self.worker, lease=lease, now=now)
            for job in enqueued[: max(self._free_slots(), 0)]
        ]
        self._reserved += len(claimed)

        def committed(ok: bool) -> None:
            self._reserved -= len(claimed)
            if not ok:
                return
            for job in claimed:
                self._start(job)
            if len(claimed) < len(enqueued):
                self.wake()  # the rest wait for a round

        return committed

    def _free_slots(self) -> int:
        if self._stopping:
            return 0
        return self.settings.job_concurrency - len(self._running) - self._reserved

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="job-dispatcher")
        outbox.attach(self.db, self)
        self._listener = jobs.listen_for_due_jobs(self.db, self.wake)

    async def _run(self) -> None:
        lease = timedelta(seconds=self.settings.job_lease_seconds)
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        woken = True  # look at once when starting
        failures = 0  # rounds in a row that failed
        while not self._stopping:
            # Cleared before looking, so a wake during the round is not lost.
            self._wake.clear()
            filled = False
            try:
                if await self.scheduler.enqueue_due():
                    woken = self._maybe_due = True
                # An idle poll asks cheaply first, so it never takes a write lock for nothing.
                if self._finished or woken or await job_store.has_work(self.db):
                    # Every half lease: bury the abandoned last attempts and take over the
                    # other abandoned jobs; the rounds between only look at pending ones.
                    sweep = loop.time() >= next_sweep
                    if sweep:
                        await job_store.bury_abandoned(self.db)
                    filled = await self._round(lease, include_abandoned=sweep)
                    if sweep:
                        next_sweep = loop.time() + lease.total_seconds() / 2
            except Exception as exc:
                # The database is away (a restart, a failover): outcomes wait in memory, and
                # the round is tried again within seconds of its return, whatever wakes us.
                failures += 1
                await back_off(
                    exc,
                    failures,
                    doing="recording and claiming jobs",
                    stop=self._stop,
                    logger=logger,
                )
                woken = self._maybe_due = True
                continue
            failures = 0
            if filled:
                continue  # every slot filled: there may be more due right now
            woken = await self._sleep()

    async def _round(self, lease: timedelta, *, include_abandoned: bool) -> bool:
        """Record finished jobs and claim new ones; True when every free slot was filled."""
        finished, self._finished = self._finished, []
        free = self._free_slots()
        if not self._maybe_due and not include_abandoned:
            free = 0
        if not finished and free <= 0:
            return False
        if free > 0:
            self._maybe_due = False  # a wake during the claim sets it again
        try:
            async with self.db.statement() as connection:
                await job_store.record(connection, finished, worker=self.worker)
                claimed = []
                if free > 0:
                    claimed = await job_store.claim_due(
                        connection,
                        worker=self.worker,
                        limit=free,
                        lease=lease,
                        include_abandoned=include_abandoned,
                    )
        except BaseException:
            # Perhaps not recorded: again next round (where it was, that changes nothing).
            self._finished[:0] = finished
            self._maybe_due = True
            raise
        for job in claimed:
            self._start(job)
        filled = bool(claimed) and len(claimed) == free
        if filled:
            self._maybe_due = True  # more may be due right now
        return filled

    async def _sleep(self) -> bool:
        """Wait for a wake-up or the poll interval; True when woken."""
        timeout = min(self.settings.job_poll_seconds, self.scheduler.seconds_until_due())
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            self._maybe_due = True  # retries fall due; other processes enqueue
            return False
        return True

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
        self._running[task] = job
        task.add_done_callback(self._on_done)

    async def _execute(self, job: ClaimedJob) -> Outcome:
        return await self.runner.run(job)

    def _on_done(self, task: asyncio.Task[Outcome]) -> None:
        job = self._running.pop(task, None)
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            # run() records failures itself; this is a bug, and the lease will run out.
            logger.error("job %s ended without an outcome", job, exc_info=error)
        else:
            self._finished.append(task.result())
        self._wake.set()  # a slot is free, and an outcome waits to be recorded

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, requeue the rest."""
        if self._stopping:
            return
        self._stopping = True
        outbox.detach(self.db, self)
        await jobs.stop_listening(self._listener)
        self._stop.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        running = dict(self._running)
        if running:
            _, unfinished = await asyncio.wait(
                running, timeout=self.settings.job_shutdown_grace_seconds
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            for task in unfinished:
                await job_store.release(self.db, running[task], worker=self.worker)
            if unfinished:
                logger.info("returned %d unfinished job(s) to the queue", len(unfinished))
        try:
            async with self.db.statement() as connection:
                await job_store.record(connection, self._finished, worker=self.worker)
            self._finished.clear()
        except Exception:
            # Their leases run out and they run again: at least once, never lost.
            logger.exception("could not record %d finished job(s)", len(self._finished))
        await self.runner.close()
