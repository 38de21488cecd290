"""Running one claimed job: its definition, its resources, and the retry policy.

A job asks for resources by type in its signature (see job_registry). The runner gives each
one from what the process provides: the settings, the database, the mailer (and whatever else
is passed in), a JobInfo of its own, and, for `AsyncSession`, a transaction of its own that
commits when the job returns and rolls back when it raises, as a request's does.

How an attempt ends: success; a permanent error (the job's `permanent_errors`, a bad payload
by default) makes it dead at once; any other error is retried with exponential backoff until
its attempts run out. A job name this process does not know goes back to the queue, due again
after about JOB_RETRY_MAX_SECONDS, its attempt not counted: mid rolling deploy a newer worker
knows it, however long the deploy takes, so that never makes it dead.
"""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core import metrics, spans
from app.core.config import Settings
from app.db.base import utcnow
from app.db.errors import is_unavailable, retry_delay
from app.db.models import JobStatus
from app.db.session import Database
from app.services import job_store
from app.services.job_registry import JobDefinition, JobInfo, Registry, load_jobs
from app.services.job_statements import UNKNOWN_NAME_ERROR
from app.services.job_store import ClaimedJob, Outcome
from app.services.mailer import Mailer

logger = logging.getLogger(__name__)


def process_resources(settings: Settings) -> list[object]:
    """The shared resources jobs may ask for, besides the settings and the database. One with
    an async `close()` is closed with the runner. A new one (an HTTP client) goes here."""
    return [Mailer(settings)]


class JobRunner:
    """Runs claimed jobs with the resources of this process."""

    def __init__(
        self, db: Database, settings: Settings, resources: Sequence[object] | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry: Registry = load_jobs()
        shared = process_resources(settings) if resources is None else list(resources)
        self._closable = shared
        self.resources: dict[type, object] = {Settings: settings, Database: db}
        self.resources.update((type(resource), resource) for resource in shared)
        for definition in self.registry.definitions.values():
            self.check(definition)

    def check(self, definition: JobDefinition[Any]) -> None:
        """Refuse, at start, a job that asks for a resource this process does not provide."""
        missing = [
            kind.__name__
            for kind in definition.resources.values()
            if kind not in self.resources and kind not in (JobInfo, AsyncSession)
        ]
        if missing:
            raise TypeError(f"job {definition.name} asks for {missing}: nothing provides them")

    async def run(self, job: ClaimedJob) -> Outcome:
        """Run one claimed job and say how it ended. Never raises but for cancellation.

        Traced as a span of the trace that enqueued the job (spans.job_attempt)."""
        with spans.job_attempt(
            job.name,
            job_id=job.id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            trace_context=job.trace_context,
        ) as finish:
            outcome = await self._attempt(job)
            finish(outcome.status.value, outcome.error and outcome.error.partition(":")[0])
        return outcome

    async def _attempt(self, job: ClaimedJob) -> Outcome:
        definition = self.registry.get(job.name)
        # The request id ties the job's log lines to the request that enqueued it.
        label = f"{job.name} {job.id} attempt {job.attempts} [request {job.request_id or '-'}]"
        if definition is None:
            return self._unknown(job, label)
        started = time.perf_counter()
        try:
            # Finish well inside the lease, or another process would take the job over.
            async with asyncio.timeout(self.settings.job_lease_seconds / 2):
                await self._call(definition, job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(job, definition, exc, label, started)
        logger.info("job %s succeeded", label)
        metrics.JOB_SECONDS.labels(job.name, "succeeded").observe(time.perf_counter() - started)
        return Outcome(job, JobStatus.SUCCEEDED, utcnow())

    async def _call(self, definition: JobDefinition[Any], job: ClaimedJob) -> None:
        payload = definition.payload_type.model_validate(job.payload)
        wanted = definition.resources
        if not wanted:
            await definition.run(payload)
            return
        async with contextlib.AsyncExitStack() as stack:
            given: dict[str, object] = {}
            for name, kind in wanted.items():
                if kind is JobInfo:
                    given[name] = JobInfo(job.id, job.name, job.attempts, job.request_id)
                elif kind is AsyncSession:
                    given[name] = await stack.enter_async_context(self.db.transaction())
                else:
                    given[name] = self.resources[kind]
            await definition.run(payload, **given)

    def _unknown(self, job: ClaimedJob, label: str) -> Outcome:
        """Back to the queue, the attempt given back: nothing ran, and a newer process knows
        the job. Operators see it queued with this error (and in the log, once a try)."""
        retry_in = _jittered(self.settings.job_retry_max_seconds)
        logger.warning(
            "job %s: no job named %r in this process; back in the queue, again in %.0f s",
            label,
            job.name,
            retry_in.total_seconds(),
        )
        error = f"{UNKNOWN_NAME_ERROR} no job named {job.name!r} here; a newer worker may know it"
        return Outcome(job, JobStatus.QUEUED, utcnow(), error, retry_in, counted=False)

    def _failed(
        self,
        job: ClaimedJob,
        definition: JobDefinition[Any],
        exc: Exception,
        label: str,
        started: float,
    ) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        permanent = isinstance(exc, definition.permanent_errors)
        dead = permanent or job.attempts >= job.max_attempts
        status = JobStatus.DEAD if dead else JobStatus.FAILED
        metrics.JOB_SECONDS.labels(job.name, status.value).observe(time.perf_counter() - started)
        if dead:
            logger.warning("job %s failed for good: %s", label, error)
            return Outcome(job, status, utcnow(), error)
        retry_in = backoff(job.attempts, self.settings)
        logger.warning("job %s failed, again in %.0f s: %s", label, retry_in.total_seconds(), error)
        metrics.JOB_RETRIES.labels(job.name).inc()
        return Outcome(job, status, utcnow(), error, retry_in)

    async def execute(self, job: ClaimedJob, *, worker: str) -> None:
        """Run one claimed job and record how it ended."""
        until = time.monotonic() + self.settings.job_lease_seconds
        outcome = await self.run(job)
        await self.record([outcome], worker=worker, until=until)

    async def record(self, outcomes: list[Outcome], *, worker: str, until: float) -> None:
        """Record outcomes; while the database is unavailable, again with a capped backoff
        until `until` (time.monotonic(): the lease's end). Only this process knows them: given
        up, the jobs run again once their leases run out."""
        failures = 0
        while True:
            try:
                async with self.db.statement() as connection:
                    await job_store.record(connection, outcomes, worker=worker)
                return
            except Exception as exc:
                failures += 1
                delay = retry_delay(failures)
                if not is_unavailable(exc) or time.monotonic() + delay > until:
                    raise
                logger.warning(
                    "could not record %d job outcome(s), again in %.1f s: %r",
                    len(outcomes),
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)

    async def run_one(self, job_id: uuid.UUID, *, worker: str) -> bool:
        """Claim and run one job by id (a Celery delivery); False when it is not ours to run.

        A duplicate delivery, or one for a job that is running elsewhere or already done, finds
        nothing to claim and does nothing.
        """
        lease = timedelta(seconds=self.settings.job_lease_seconds)
        if not self.db.is_postgresql:
            # Claim and outcome are writing transactions, never held while the job runs: on
            # SQLite that would lock out every other writer.
            claimed = await job_store.claim(
                self.db, worker=worker, limit=1, lease=lease, job_id=job_id
            )
            for job in claimed:
                await self.execute(job, worker=worker)
            return bool(claimed)
        # One autocommit connection for both, idle while the job runs: a pool checkout less.
        # A claim that meets an unavailable database raises: the delivery is tried again.
        async with self.db.statement() as connection:
            claimed = await job_store.claim_due(
                connection, worker=worker, limit=1, lease=lease, job_id=job_id
            )
            if not claimed:
                return False
            until = time.monotonic() + lease.total_seconds()
            outcomes = [await self.run(job) for job in claimed]
            try:
                await job_store.record(connection, outcomes, worker=worker)
                return True
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
        # The database went away while the job ran: record on a new connection once it is back.
        await self.record(outcomes, worker=worker, until=until)
        return True

    async def close(self) -> None:
        for resource in self._closable:
            close = getattr(resource, "close", None)
            if close is not None:
                await close()


def backoff(attempt: int, settings: Settings) -> timedelta:
    """Exponential backoff with jitter, so retries of many failed jobs do not arrive together."""
    return _jittered(
        min(settings.job_retry_base_seconds * 2 ** (attempt - 1), settings.job_retry_max_seconds)
    )


def _jittered(ceiling: float) -> timedelta:
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))
