"""The Celery relay's bookkeeping, with a publisher that records instead of a broker.

The broker end to end (a real Redis or RabbitMQ and Celery worker) is in tests/integration.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job
from app.db.session import Database
from app.services import job_store, jobs, relay, tasks
from app.services.relay import Relay


class Broker:
    """Takes published job ids, or refuses them while `down`."""

    def __init__(self) -> None:
        self.published: list[uuid.UUID] = []
        self.down = False

    def publish(self, job_ids: list[uuid.UUID]) -> None:
        if self.down:
            raise ConnectionError("the broker is down")
        self.published.extend(job_ids)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    yield database
    async with database.transaction() as session:
        for job in await session.scalars(select(Job)):
            await session.delete(job)
    await database.dispose()


async def start_relay(
    db: Database,
    settings: Settings,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    *,
    poll_seconds: float = 60.0,
) -> tuple[Relay, list[str]]:
    """A relay (polling every minute unless told), once it looked at the table at start, and
    what it asks of the table from then on: "look" for each check for work, "claim N" for each
    round that claimed N jobs to publish."""
    asked: list[str] = []
    has_work, claim_for_publish = job_store.has_work, job_store.claim_for_publish

    async def counted_look(db: Database) -> bool:
        asked.append("look")
        return await has_work(db)

    async def counted_claim(
        db: Database, *, limit: int, republish_after: timedelta
    ) -> list[uuid.UUID]:
        claimed = await claim_for_publish(db, limit=limit, republish_after=republish_after)
        asked.append(f"claim {len(claimed)}")
        return claimed

    monkeypatch.setattr(job_store, "has_work", counted_look)
    monkeypatch.setattr(job_store, "claim_for_publish", counted_claim)
    runner = Relay(
        db, settings.model_copy(update={"job_poll_seconds": poll_seconds}), broker.publish
    )
    runner.start()
    async with asyncio.timeout(5):
        while not asked:  # the look at start, so it cannot overlap the commits below
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # on PostgreSQL, the look once it listens for announcements
    asked.clear()
    return runner, asked


async def enqueue(db: Database) -> uuid.UUID:
    async with db.transaction() as session:
        payload = tasks.UserMail(user_id=uuid.uuid4())
        job = await jobs.enqueue(session, tasks.send_welcome_email, payload)
    return job.id


async def wait_for(condition: object, seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_jobs_are_published_as_their_transaction_commits_without_a_round(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker()
    runner, asked = await start_relay(db, settings, broker, monkeypatch)
    try:
        job_ids = [await enqueue(db) for _ in range(3)]
        await wait_for(lambda: len(broker.published) == 3)
        assert broker.published == job_ids
        async with db.transaction() as session:
            stamped = list(await session.scalars(select(Job.published_at)))
        assert len(stamped) == 3
        assert all(at is not None for at in stamped)
        await asyncio.sleep(0.2)
        assert asked == []  # no round went to the table
    finally:
        await runner.stop()


async def test_jobs_the_broker_refused_are_published_by_a_later_round(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "BROKER_DOWN_PAUSE_S", 0.05)
    broker = Broker()
    runner, asked = await start_relay(db, settings, broker, monkeypatch, poll_seconds=0.1)
    try:
        broker.down = True
        job_id = await enqueue(db)
        # Refused as its transaction committed, then unstamped and claimed again by a round.
        await wait_for(lambda: "claim 1" in asked)
        broker.down = False
        await wait_for(lambda: broker.published == [job_id])
        async with db.transaction() as session:
            job = await session.get(Job, job_id)
        assert job is not None
        assert job.published_at is not None
    finally:
        await runner.stop()


async def test_a_stopping_relay_leaves_new_jobs_to_the_table(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker()
    runner, _ = await start_relay(db, settings, broker, monkeypatch)
    await runner.stop()
    job_id = await enqueue(db)
    async with db.transaction() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    assert job.published_at is None  # another relay's round publishes it
    assert broker.published == []
