"""Periodic jobs: each tick enqueued once, whoever looks, on each backend; then ordinary jobs."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobRun, JobStatus
from app.db.session import Database
from app.services import jobs
from app.services.dispatcher import Dispatcher
from app.services.job_registry import JobDefinition, JobInfo, job, registry
from app.services.relay import Relay
from app.services.retention import NoPayload
from app.services.scheduler import Scheduler
from app.services.schedules import current_tick
from tests.conftest import MakeUser, bearer, login
from tests.jobs import JOB_WAIT_S, wait_for_job

ran: Counter[uuid.UUID] = Counter()
failures_left = Counter[str]()  # how many more attempts of the test job fail


async def every_so_often(payload: NoPayload, *, info: JobInfo) -> None:
    ran[info.id] += 1
    if failures_left["attempts"]:
        failures_left["attempts"] -= 1
        raise RuntimeError("the test job fails this attempt")


async def declare(
    app: FastAPI, every: timedelta | None = None, cron: str | None = None
) -> JobDefinition[NoPayload]:
    """The test's periodic job, once the app's own dispatcher stopped (it would enqueue it too)."""
    await app.state.jobs.stop()
    ran.clear()
    failures_left.clear()
    return job(max_attempts=2, every=every, cron=cron)(every_so_often)


@pytest.fixture(autouse=True)
def _forget_the_test_job() -> Iterator[None]:
    yield
    registry.definitions.pop(every_so_often.__name__, None)


def _aware(tick: object) -> datetime:
    assert isinstance(tick, datetime)
    return tick if tick.tzinfo is not None else tick.replace(tzinfo=UTC)  # SQLite: naive UTC


async def ticks(db: Database) -> list[tuple[object, int]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(Job.tick_at, func.count())
            .where(Job.name == every_so_often.__name__)
            .group_by(Job.tick_at)
            .order_by(Job.tick_at)
        )
        return [(tick, count) for tick, count in rows]


@pytest.mark.parametrize(
    ("schedule", "enough"),
    [({"every": timedelta(seconds=0.2)}, 12), ({"cron": "* * * * * *"}, 4)],  # cron: each second
    ids=["every", "cron"],
)
async def test_two_dispatchers_and_a_relay_enqueue_each_tick_once(
    app: FastAPI, settings: Settings, schedule: dict[str, Any], enough: int
) -> None:
    definition = await declare(app, **schedule)
    timetable = definition.schedule(settings)
    assert timetable is not None
    databases = [app.state.db, Database.from_settings(settings), Database.from_settings(settings)]
    published: list[uuid.UUID] = []
    processes: list[Dispatcher | Relay] = [
        Dispatcher(databases[0], settings),
        Dispatcher(databases[1], settings),
        Relay(databases[2], settings, published.extend),
    ]
    for process in processes:
        process.start()
    try:
        async with asyncio.timeout(30):
            while len(await ticks(app.state.db)) < enough:
                await asyncio.sleep(0.1)
    finally:
        for process in processes:
            await process.stop()
        for db in databases[1:]:
            await db.dispose()
    seen = await ticks(app.state.db)
    assert len(seen) >= enough
    assert all(count == 1 for _, count in seen), seen
    # Each one a start of the schedule's ticks, as every process works them out.
    starts = [_aware(tick) for tick, _ in seen]
    assert all(timetable.tick(start) == start for start in starts), starts
    async with app.state.db.transaction() as session:
        succeeded = set(
            await session.scalars(
                select(Job.id).where(
                    Job.name == every_so_often.__name__, Job.status == JobStatus.SUCCEEDED
                )
            )
        )
    # Ordinary jobs from then on: each ran once, by one dispatcher or the other.
    assert set(ran) == succeeded
    assert all(count == 1 for count in ran.values())
    assert len(succeeded) >= len(seen) - 3  # the last few may still have been queued at the stop


async def test_ticks_missed_while_nothing_ran_come_to_one_run(
    app: FastAPI, settings: Settings
) -> None:
    definition = await declare(app, timedelta(hours=1))
    now = utcnow()
    async with app.state.db.transaction() as session:
        session.add(
            Job(
                name=definition.name,
                payload={},
                status=JobStatus.SUCCEEDED,
                max_attempts=2,
                tick_at=current_tick(timedelta(hours=1), now) - timedelta(hours=5),
            )
        )
    other_db = Database.from_settings(settings)
    try:
        schedulers = [Scheduler(app.state.db, settings), Scheduler(other_db, settings)]
        first = await asyncio.gather(*(s.enqueue_due() for s in schedulers))
        again = await asyncio.gather(*(s.enqueue_due() for s in schedulers))
        # A fresh process looks again: the tick is there already.
        late = await Scheduler(other_db, settings).enqueue_due()
    finally:
        await other_db.dispose()
    assert sorted(first) == [0, 1]
    assert again == [0, 0]
    assert late == 0
    seen = await ticks(app.state.db)
    assert [count for _, count in seen] == [1, 1]
    assert seen[-1][0] == current_tick(timedelta(hours=1), utcnow())


async def test_a_periodic_job_is_an_ordinary_job_retried_and_retryable(
    app: FastAPI, settings: Settings
) -> None:
    definition = await declare(app, timedelta(hours=1))
    async with app.state.db.transaction() as session:
        dead = Job(
            name=definition.name,
            payload={},
            status=JobStatus.DEAD,
            attempts=2,
            max_attempts=2,
            tick_at=current_tick(timedelta(hours=1), utcnow()),
        )
        session.add(dead)
    dispatcher = Dispatcher(app.state.db, settings)
    dispatcher.start()
    try:
        async with app.state.db.transaction() as session:
            await jobs.retry(session, dead.id)
        done = await wait_for_job(app.state.db, dead.id, JobStatus.SUCCEEDED)
    finally:
        await dispatcher.stop()
    assert ran[done.id] == 1
    # Its tick was taken: the dispatcher enqueued no second job for it.
    assert [count for _, count in await ticks(app.state.db)] == [1]


async def the_tick_job(db: Database) -> Job:
    """The test job the scheduler enqueued for the current tick, once it is there."""
    async with asyncio.timeout(JOB_WAIT_S):
        while True:
            async with db.transaction() as session:
                job = await session.scalar(select(Job).where(Job.name == every_so_often.__name__))
            if job is not None:
                return job
            await asyncio.sleep(0.02)


async def outcomes(db: Database, job_id: uuid.UUID) -> list[tuple[int, str | None]]:
    async with db.transaction() as session:
        runs = await session.execute(
            select(JobRun.attempt, JobRun.outcome)
            .where(JobRun.job_id == job_id)
            .order_by(JobRun.started_at)
        )
        return [(attempt, outcome) for attempt, outcome in runs]


async def test_a_periodic_jobs_failed_attempt_is_retried_by_the_runner(
    app: FastAPI, settings: Settings
) -> None:
    await declare(app, timedelta(hours=1))
    failures_left["attempts"] = 1
    dispatcher = Dispatcher(app.state.db, settings)
    dispatcher.start()
    try:
        tick_job = await the_tick_job(app.state.db)
        done = await wait_for_job(app.state.db, tick_job.id, JobStatus.SUCCEEDED)
    finally:
        await dispatcher.stop()
    assert done.tick_at == current_tick(timedelta(hours=1), utcnow())
    assert done.attempts == 2
    assert ran[done.id] == 2
    assert await outcomes(app.state.db, done.id) == [(1, "failed"), (2, "succeeded")]
    assert [count for _, count in await ticks(app.state.db)] == [1]


async def test_a_dead_periodic_job_is_retried_through_the_api_and_runs_again(
    app: FastAPI, settings: Settings, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(email="admin@example.com", is_superuser=True, is_verified=True)
    admin = bearer(await login(client, "admin@example.com"))
    await declare(app, timedelta(hours=1))
    failures_left["attempts"] = 2  # each of its max_attempts
    dispatcher = Dispatcher(app.state.db, settings)
    dispatcher.start()
    try:
        tick_job = await the_tick_job(app.state.db)
        dead = await wait_for_job(app.state.db, tick_job.id, JobStatus.DEAD)
        seen = await client.get(f"/api/v1/jobs/{dead.id}", headers=admin)
        assert seen.json()["status"] == "dead"  # visible as any job is
        retried = await client.post(f"/api/v1/jobs/{dead.id}/retry", headers=admin)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "queued"
        done = await wait_for_job(app.state.db, dead.id, JobStatus.SUCCEEDED)
    finally:
        await dispatcher.stop()
    assert done.attempts == 1
    assert ran[done.id] == 3
    assert await outcomes(app.state.db, done.id) == [(1, "failed"), (2, "dead"), (1, "succeeded")]
    # The retried tick is still the only job of its tick: retrying enqueued no second one.
    assert [count for _, count in await ticks(app.state.db)] == [1]
