"""Behind a real PgBouncer in transaction mode (DB_TRANSACTION_POOLER=true).

Each test starts a PgBouncer with POOL_SIZE server connections in front of the test database
and gives the app more client connections than that, so statements of different clients
share server connections: what a named prepared statement or a session setting would not
survive.
"""

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.db.session import Database
from app.main import create_app
from app.services import jobs
from app.services.job_registry import job
from tests.conftest import IN_CI, PASSWORD, bearer, direct_url, empty_tables, login
from tests.jobs import wait_for_job
from tests.pgbouncer import PgBouncer

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

POOL_SIZE = 3  # server connections; the app's pool has CLIENTS
CLIENTS = 12
USERS = 12
ran: set[str] = set()


class Mark(BaseModel):
    key: str


@job(max_attempts=2)
async def mark_ran(payload: Mark) -> None:
    ran.add(payload.key)


@pytest.fixture
def bouncer(database_url: str) -> Iterator[PgBouncer]:
    if shutil.which("pgbouncer") is None and not IN_CI:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with PgBouncer(direct_url(database_url), pool_size=POOL_SIZE) as running:
        yield running


@pytest.fixture
def pooled(settings: Settings, bouncer: PgBouncer) -> Settings:
    """The app's settings through `bouncer`, listening on the direct URL."""
    direct = direct_url(settings.database_url)
    database = make_url(direct).database
    assert database
    return settings.model_copy(
        update={
            "database_url": bouncer.url(database),
            "db_transaction_pooler": True,
            "database_listen_url": direct,
            "db_pool_size": CLIENTS,
        }
    )


async def _app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = await asyncio.to_thread(create_app, settings)  # building an app is sync work
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield app, c
        finally:
            await empty_tables(app)
    await app.state.db.dispose()


async def _server_connection_states(bouncer: PgBouncer, database: str) -> list[tuple[int, int]]:
    """(backend pid, prepared statements) of every server connection PgBouncer holds for
    `database`: POOL_SIZE transactions held at once through it cover them all."""
    connections = [
        await asyncpg.connect(
            f"postgresql://{bouncer.user}@127.0.0.1:{bouncer.port}/{database}",
            statement_cache_size=0,
        )
        for _ in range(POOL_SIZE)
    ]
    try:
        for connection in connections:
            await connection.execute("BEGIN")
        return [
            (
                await connection.fetchval("SELECT pg_backend_pid()"),
                await connection.fetchval("SELECT count(*) FROM pg_prepared_statements"),
            )
            for connection in connections
        ]
    finally:
        for connection in connections:
            await connection.close()


async def test_concurrent_requests_share_server_connections_without_prepared_statements(
    pooled: Settings, bouncer: PgBouncer
) -> None:
    async for app, client in _app(pooled):
        registered = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/auth/register",
                    json={"email": f"u{n}@example.com", "name": f"U{n}", "password": PASSWORD},
                )
                for n in range(USERS)
            )
        )
        assert [r.status_code for r in registered] == [201] * USERS, registered[0].text
        tokens = await asyncio.gather(*(login(client, f"u{n}@example.com") for n in range(USERS)))
        for _ in range(3):
            answers = await asyncio.gather(
                *(client.get("/api/v1/users/me", headers=bearer(t)) for t in tokens * 4),
                *(
                    client.patch("/api/v1/users/me", json={"name": "N"}, headers=bearer(t))
                    for t in tokens
                ),
            )
            assert {r.status_code for r in answers} == {200}, [
                r.text for r in answers if r.is_error
            ]
        # The premise: the app opened more connections than PgBouncer has to the server.
        assert app.state.db.engine.pool.checkedin() > POOL_SIZE
    database = make_url(pooled.database_url).database
    assert database
    states = await _server_connection_states(bouncer, database)
    assert len({pid for pid, _ in states}) == POOL_SIZE
    assert [count for _, count in states] == [0] * POOL_SIZE  # none outlived its transaction


async def test_the_statement_timeout_holds_in_every_transaction(pooled: Settings) -> None:
    """The pooler passes no startup `statement_timeout` on: it is set in each transaction."""
    db = Database.from_settings(pooled.model_copy(update={"db_statement_timeout_ms": 300}))
    try:
        for _ in range(POOL_SIZE * 2):  # whichever server connection each one gets
            async with db.transaction() as session:
                assert await session.scalar(text("SHOW statement_timeout")) == "300ms"
        with pytest.raises(DBAPIError, match="statement timeout"):
            async with db.transaction() as session:
                await session.execute(text("SELECT pg_sleep(5)"))
    finally:
        await db.dispose()


async def test_the_dispatcher_wakes_through_the_listen_url(pooled: Settings) -> None:
    """Polling once a minute, it still runs at once a job another process announced."""
    slow_poll = pooled.model_copy(update={"job_poll_seconds": 60.0})
    producer = Database.from_settings(pooled)  # NOTIFY goes through PgBouncer, committed
    async for app, _ in _app(slow_poll):
        assert app.state.db.can_listen
        await asyncio.sleep(0.5)  # the dispatcher's look at start, and it listens
        try:
            async with producer.transaction() as session:
                announced = Job(name=mark_ran.name, payload={"key": "announced"}, max_attempts=2)
                session.add(announced)
                await jobs.announce(session)
            async with asyncio.timeout(5):
                await wait_for_job(app.state.db, announced.id, JobStatus.SUCCEEDED)
        finally:
            await app.state.jobs.stop()
            await producer.dispose()
    assert "announced" in ran


async def test_without_a_listen_url_nothing_listens_and_the_poll_runs_the_jobs(
    pooled: Settings,
) -> None:
    polling = pooled.model_copy(update={"database_listen_url": "", "job_poll_seconds": 0.2})
    producer = Database.from_settings(polling)
    async for app, _ in _app(polling):
        try:
            async with producer.transaction() as session:
                announced = Job(name=mark_ran.name, payload={"key": "polled"}, max_attempts=2)
                session.add(announced)
                await jobs.announce(session)
            await wait_for_job(app.state.db, announced.id, JobStatus.SUCCEEDED)
            server = await asyncpg.connect(
                make_url(pooled.database_listen_url)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False)
            )
            try:
                listening = await server.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            finally:
                await server.close()
        finally:
            await app.state.jobs.stop()
            await producer.dispose()
    assert not app.state.db.can_listen
    assert listening == 0
    assert "polled" in ran
