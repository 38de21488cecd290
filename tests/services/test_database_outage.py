"""The embedded dispatcher and the Celery relay when the database goes away and comes back.

Each reaches PostgreSQL through a proxy the test cuts and restores; the rest of the test
reaches it directly. While it is away, a loop tries again at a capped backoff, however often
it is woken; once it is back, the work resumes within that backoff, not at a lease's end or
after JOB_REPUBLISH_SECONDS (both at their defaults here).
"""

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.db.session import Database
from app.services import job_store
from app.services.dispatcher import Dispatcher
from app.services.relay import Relay
from tests.integration.proxy import TcpProxy
from tests.jobs import wait_for_job
from tests.services.test_jobs import Key, enqueue, record_run, runs

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

WAKES = 100  # wake-ups while the database is away, 10 ms apart: jobs finishing, commits
# A backoff from 0.25 s doubling to 2 s tries a few times in those 1-2 s; a loop that tries
# again at every wake-up, about WAKES times.
MOST_TRIES = 10


@pytest.fixture
async def direct(settings: Settings) -> AsyncIterator[Database]:
    """The database as the rest of the fleet reaches it."""
    db = Database.from_settings(settings)
    yield db
    async with db.transaction() as session:
        for job in await session.scalars(select(Job)):
            await session.delete(job)
    await db.dispose()


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    way = await TcpProxy.to(settings.database_url)
    yield way
    await way.close()


@pytest.fixture
async def behind(settings: Settings, proxy: TcpProxy) -> AsyncIterator[tuple[Database, Settings]]:
    """The database as the process under test reaches it: through the proxy."""
    through = settings.model_copy(update={"database_url": proxy.url(settings.database_url)})
    defaults = Settings.model_fields
    assert through.job_lease_seconds == defaults["job_lease_seconds"].default
    assert through.job_republish_seconds == defaults["job_republish_seconds"].default
    db = Database.from_settings(through)
    yield db, through
    await db.dispose()


async def wake_repeatedly(wake: Callable[[], None]) -> None:
    for _ in range(WAKES):
        wake()
        await asyncio.sleep(0.01)


async def test_a_dispatcher_backs_off_while_the_database_is_away_and_resumes_when_back(
    behind: tuple[Database, Settings], direct: Database, proxy: TcpProxy
) -> None:
    db, settings = behind
    dispatcher = Dispatcher(db, settings)
    tries: list[float] = []
    original = dispatcher._round

    async def counted(lease: timedelta, *, include_abandoned: bool) -> bool:
        tries.append(asyncio.get_running_loop().time())
        return await original(lease, include_abandoned=include_abandoned)

    dispatcher._round = counted  # type: ignore[method-assign]
    dispatcher.start()
    try:
        await asyncio.sleep(0.3)  # its first round, with the database there
        await proxy.cut()
        job_id = await enqueue(direct, record_run, Key(key="outage"))  # another process's
        tries.clear()
        await wake_repeatedly(dispatcher.wake)
        assert 1 <= len(tries) <= MOST_TRIES
        await proxy.restore()
        await wait_for_job(direct, job_id, JobStatus.SUCCEEDED)
        assert runs["outage"] == 1
    finally:
        await dispatcher.stop()


class Broker:
    """Takes published job ids; while `down`, refuses them, holding the refusal until `refuse`
    is set (so the test can take the database away first)."""

    def __init__(self) -> None:
        self.published: list[uuid.UUID] = []
        self.down = False
        self.publishing = threading.Event()  # a publish is waiting for `refuse`
        self.refuse = threading.Event()

    def publish(self, job_ids: list[uuid.UUID]) -> None:
        if self.down:
            self.publishing.set()
            self.refuse.wait(10)
            raise ConnectionError("the broker is down")
        self.published.extend(job_ids)


async def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_relay_backs_off_while_the_database_is_away_and_resumes_when_back(
    behind: tuple[Database, Settings],
    direct: Database,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, settings = behind
    broker = Broker()
    looks: list[bool] = []
    has_work = job_store.has_work

    async def counted(db: Database) -> bool:
        looks.append(True)
        return await has_work(db)

    monkeypatch.setattr(job_store, "has_work", counted)
    relay = Relay(db, settings, broker.publish)
    relay.start()
    try:
        await asyncio.sleep(0.3)
        await proxy.cut()
        looks.clear()
        await wake_repeatedly(relay.wake)
        assert 1 <= len(looks) <= MOST_TRIES
        await proxy.restore()
        job_id = await enqueue(direct, record_run, Key(key="relayed"))  # another process's
        relay.wake()  # as its NOTIFY would
        await wait_for(lambda: broker.published == [job_id])
    finally:
        await relay.stop()


async def test_jobs_the_broker_refused_while_the_database_was_away_are_sent_once_both_are_back(
    behind: tuple[Database, Settings], proxy: TcpProxy
) -> None:
    """Committed here and stamped as published; the broker refuses them, and they cannot be
    unstamped: the relay keeps them, rather than leave them to the republish sweep."""
    db, settings = behind
    broker = Broker()
    relay = Relay(db, settings, broker.publish)
    relay.start()
    try:
        await asyncio.sleep(0.3)
        broker.down = True
        job_id = await enqueue(db, record_run, Key(key="kept"))
        await asyncio.to_thread(broker.publishing.wait, 10)
        await proxy.cut()
        broker.refuse.set()
        await asyncio.sleep(0.5)  # the unstamping meets the closed database
        broker.down = False
        await proxy.restore()
        await wait_for(lambda: broker.published == [job_id])
        async with db.transaction() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            await session.delete(job)
    finally:
        await relay.stop()
