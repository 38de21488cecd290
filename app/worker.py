"""The Celery app of the scale-out backend: `python -m app worker` or `celery -A app.worker worker`.

Workers run the same job code as the embedded backend. The job row stays the single source of
truth: a task only carries a job id, claims the row (so a duplicate delivery does nothing), and
records the outcome there. A job's retries are scheduled in the job table; a Celery countdown
only carries a delivery that found the database unavailable (see run_job).

Nothing is built at import. `python -m app worker` builds its Celery app from its settings
(`create_celery`). For `celery -A app.worker`, Celery looks up `app.worker.celery`: that name is
made on first lookup (a module `__getattr__`), from the environment, as `python -m app` reads it.
"""

import asyncio
import gc
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from app.core import tracing
from app.core.config import Settings, load_settings
from app.db.errors import is_unavailable, longest_delay, retry_delay
from app.db.session import Database
from app.services.job_registry import load_jobs
from app.services.job_runner import JobRunner

logger = logging.getLogger(__name__)

RUN_JOB = "jobs.run"
QUEUE = "jobs"
# A delivery that found the database unavailable comes back after at most this long: longer
# than the dispatcher's and relay's RETRY_MAX_S, as each try here is a message per job.
UNAVAILABLE_RETRY_MAX_S = 5.0


class JobsCelery(Celery):
    """A Celery app that knows the settings it was built from."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            "accounts", broker=settings.broker_url or "memory://", set_as_current=False
        )
        self.settings = settings


def create_celery(settings: Settings) -> JobsCelery:
    celery = JobsCelery(settings)
    celery.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        # A task is acknowledged only after it ran; a worker that dies mid-task gives it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # The relay keeps undelivered jobs in the table: fail fast rather than block it.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    )
    # run_job bounds its own retries (unavailable_retries), not Celery's default of 3.
    celery.task(name=RUN_JOB, bind=True, max_retries=None)(run_job)
    tracing.configure()  # `celery -A app.worker` starts here
    tracing.instrument_celery()
    # Before the pool forks: every pool process starts knowing every declared job.
    load_jobs()
    return celery


@dataclass
class _Runtime:
    """One persistent event loop, engine and job runner per worker process, after the fork."""

    pid: int
    loop: asyncio.AbstractEventLoop
    db: Database
    runner: JobRunner
    worker: str


_runtime: _Runtime | None = None


def runtime(settings: Settings) -> _Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # A worker commits job bookkeeping only (and what jobs write), all of it repeated
        # if a database crash loses it: the claim or outcome undone, the job runs again.
        # A job is never lost this way: its row was committed, durably, by whoever enqueued it.
        db = Database.from_settings(settings, wait_for_flush=False)
        tracing.instrument_engine(db.engine)
        _runtime = _Runtime(
            pid=os.getpid(),
            loop=loop,
            db=db,
            runner=JobRunner(db, settings),
            worker=f"celery:{socket.gethostname()}:{os.getpid()}",
        )
    return _runtime


def run_job(task: Task[Any, Any], job_id: str) -> None:
    """Claim, run and record one job.

    A delivery that cannot reach the database (a restart, a failover) is not dropped: it goes
    back to the broker with a countdown (a capped backoff), so the job runs within seconds of
    the database's return, not once the relay republishes it after JOB_REPUBLISH_SECONDS. It
    stops trying once that sweep would have republished it anyway.
    """
    app = task.app
    assert isinstance(app, JobsCelery)
    rt = runtime(app.settings)
    try:
        rt.loop.run_until_complete(rt.runner.run_one(uuid.UUID(job_id), worker=rt.worker))
    except Exception as exc:
        retries = task.request.retries
        if not is_unavailable(exc) or retries >= unavailable_retries(app.settings):
            raise
        delay = retry_delay(retries + 1, ceiling=UNAVAILABLE_RETRY_MAX_S)
        logger.warning(
            "job %s: the database is unavailable, delivered again in %.1f s: %r", job_id, delay, exc
        )
        # The original exception stays out of the Retry: it may not pickle to the parent.
        raise task.retry(countdown=delay) from None


def unavailable_retries(settings: Settings) -> int:
    """How many retries of one delivery span at least JOB_REPUBLISH_SECONDS, even with the
    shortest jitter: beyond that the relay republishes the job once the database is back."""
    retries, spanned = 0, 0.0
    while spanned < settings.job_republish_seconds:
        retries += 1
        spanned += longest_delay(retries, ceiling=UNAVAILABLE_RETRY_MAX_S) / 2
    return retries


@worker_init.connect
@worker_process_init.connect
def _freeze_startup_objects(**_: object) -> None:
    """Leave what the worker holds from its start (about 90,000 objects: Celery, SQLAlchemy,
    the app's modules) out of the collector's full scans, as the API does: scanning them took
    about 60 ms, with the task at hand stopped. The consumer freezes before it forks the pool,
    each pool process once it is ready."""
    gc.freeze()


@worker_process_shutdown.connect
def _close_runtime(**_: object) -> None:
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.loop.run_until_complete(_runtime.runner.close())
        _runtime.loop.run_until_complete(_runtime.db.dispose())
        _runtime.loop.close()
    tracing.flush()  # a pool process may end without running atexit handlers


def publisher(celery: Celery) -> Callable[[list[uuid.UUID]], None]:
    """Publish job ids with the job id as task id, over one producer per batch."""

    def publish(job_ids: list[uuid.UUID]) -> None:
        with celery.producer_or_acquire() as producer:
            for job_id in job_ids:
                celery.send_task(
                    RUN_JOB, args=[str(job_id)], task_id=str(job_id), producer=producer
                )

    return publish


_from_environment: JobsCelery | None = None


def __getattr__(name: str) -> JobsCelery:
    """`app.worker.celery`, for `celery -A app.worker`: built on first lookup, not at import."""
    global _from_environment
    if name != "celery":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _from_environment is None:
        _from_environment = create_celery(load_settings())
    return _from_environment
