"""The Celery app of the scale-out backend: `celery -A app.worker worker` or `python -m app worker`.

Workers run the same job code as the embedded backend. The job row stays the single source of
truth: a task only carries a job id, claims the row (so a duplicate delivery does nothing), and
records the outcome there. Retries are scheduled in the job table, never with Celery countdowns.
"""

import asyncio
import gc
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from app.core.config import Settings, load_settings
from app.db.session import Database, create_engine
from app.services import job_runner
from app.services import tasks as _tasks  # noqa: F401  (registers the job definitions)
from app.services.mailer import Mailer

RUN_JOB = "jobs.run"
QUEUE = "jobs"


def create_celery(settings: Settings) -> Celery:
    celery = Celery("accounts", broker=settings.broker_url or "memory://", set_as_current=False)
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
    celery.task(name=RUN_JOB)(run_job)
    return celery


@dataclass
class _Runtime:
    """One persistent event loop and engine per worker process, created after the fork."""

    pid: int
    loop: asyncio.AbstractEventLoop
    db: Database
    settings: Settings
    mailer: Mailer
    worker: str


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        settings = load_settings()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _runtime = _Runtime(
            pid=os.getpid(),
            loop=loop,
            # A worker commits job bookkeeping only (and what jobs write), all of it repeated
            # if a database crash loses it: the claim or outcome undone, the job runs again.
            # A job is never lost this way: its row was committed, durably, by whoever enqueued it.
            db=Database(create_engine(settings, wait_for_flush=False)),
            settings=settings,
            mailer=Mailer(settings),
            worker=f"celery:{socket.gethostname()}:{os.getpid()}",
        )
    return _runtime


def run_job(job_id: str) -> None:
    rt = runtime()
    rt.loop.run_until_complete(
        job_runner.run_one(
            uuid.UUID(job_id), worker=rt.worker, db=rt.db, settings=rt.settings, mailer=rt.mailer
        )
    )


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
        _runtime.loop.run_until_complete(_runtime.mailer.close())
        _runtime.loop.run_until_complete(_runtime.db.dispose())
        _runtime.loop.close()


def publisher(celery: Celery) -> Callable[[list[uuid.UUID]], None]:
    """Publish job ids with the job id as task id, over one producer per batch."""

    def publish(job_ids: list[uuid.UUID]) -> None:
        with celery.producer_or_acquire() as producer:
            for job_id in job_ids:
                celery.send_task(
                    RUN_JOB, args=[str(job_id)], task_id=str(job_id), producer=producer
                )

    return publish


celery = create_celery(load_settings())
