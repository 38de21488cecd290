"""Periodic jobs across a mixed fleet: two embedded dispatchers and a relay feeding a real
Celery worker, on one database, run each tick exactly once."""

import asyncio
from datetime import timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.config import Settings
from app.db.models import Job, JobRun, JobStatus
from app.db.session import Database
from app.services.dispatcher import Dispatcher
from app.services.relay import Relay
from app.services.retention import prune_history
from app.services.schedules import current_tick
from app.worker import create_celery, publisher
from tests.integration.conftest import Worker

# Celery workers share the database with the API: PostgreSQL, as at scale.
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

EVERY = timedelta(seconds=0.3)
TICKS = 15


async def tick_jobs(db: Database) -> list[Job]:
    async with db.transaction() as session:
        return list(
            await session.scalars(
                select(Job).where(Job.name == prune_history.name).order_by(Job.tick_at)
            )
        )


async def test_two_dispatchers_and_a_celery_worker_run_each_tick_once(
    app: FastAPI, celery_settings: Settings, worker: Worker
) -> None:
    await app.state.jobs.stop()  # the app's own dispatcher does not tick
    # prune_history is the periodic job every process knows, the Celery worker's included.
    ticking = celery_settings.model_copy(
        update={"prune_interval_seconds": EVERY.total_seconds(), "job_poll_seconds": 0.1}
    )
    embedded = ticking.model_copy(update={"broker_url": ""})
    await worker.start()
    await worker.ready()
    databases = [Database.from_settings(ticking) for _ in range(3)]
    relay = Relay(databases[2], ticking, publisher(create_celery(ticking)))
    processes: list[Dispatcher | Relay] = [
        Dispatcher(databases[0], embedded),
        Dispatcher(databases[1], embedded),
        relay,
    ]
    for process in processes:
        process.start()
    try:
        async with asyncio.timeout(60):
            while len(await tick_jobs(app.state.db)) < TICKS:
                await asyncio.sleep(0.1)
    finally:
        for process in processes:
            await process.stop()
        for db in databases:
            await db.dispose()
    # What was published is still run by the worker; the last ticks may stay queued.
    async with asyncio.timeout(30):
        while any(job.status == JobStatus.RUNNING for job in await tick_jobs(app.state.db)):
            await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # a delivery still on its way to the worker
    ticks = await tick_jobs(app.state.db)
    async with app.state.db.transaction() as session:
        counted = await session.execute(select(JobRun.job_id, func.count()).group_by(JobRun.job_id))
        runs = {job_id: count for job_id, count in counted}
        runners = set(await session.scalars(select(JobRun.worker)))
    ran = [job for job in ticks if job.status != JobStatus.QUEUED]
    assert all(job.status == JobStatus.SUCCEEDED for job in ran), [j.status for j in ran]
    assert len(ran) >= TICKS - 3
    tick_times = [job.tick_at for job in ticks]
    assert len(tick_times) >= TICKS
    assert len(set(tick_times)) == len(tick_times)  # one job per tick
    # Each on its tick, as every process computes it, not the instant someone enqueued it.
    assert all(t is not None and t == current_tick(EVERY, t) for t in tick_times)
    assert all(job.attempts == 1 and runs[job.id] == 1 for job in ran)  # each ran once
    # The race was real: the relay handed ticks to the Celery worker while the dispatchers
    # could claim them too (who wins each is up to timing; the loser must do nothing).
    assert any(job.published_at is not None for job in ran)
    assert any(not name.startswith("celery:") for name in runners), runners
