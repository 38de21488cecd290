"""A database that is exhausted, gone or stuck answers 503 quickly, never a hang or a 500."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.core.config import Settings
from app.db import session
from app.db.errors import is_unavailable
from app.main import create_app
from tests.conftest import PASSWORD, bearer, direct_url, login, make_settings

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def test_exhausted_pool_answers_503_after_the_pool_timeout(
    settings: Settings, client: httpx.AsyncClient, app: FastAPI
) -> None:
    engine = app.state.db.engine
    held = [await engine.connect() for _ in range(settings.db_pool_size)]
    try:
        async with asyncio.timeout(settings.db_pool_timeout + 5):
            response = await client.post(
                "/api/v1/auth/register",
                json={"email": "late@example.com", "name": "Late", "password": PASSWORD},
            )
    finally:
        for connection in held:
            await connection.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json() == {"detail": "The database is unavailable; try again shortly"}


async def test_pool_serves_again_once_connections_return(
    settings: Settings, client: httpx.AsyncClient, app: FastAPI
) -> None:
    held = [await app.state.db.engine.connect() for _ in range(settings.db_pool_size)]
    for connection in held:
        await connection.close()
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "back@example.com", "name": "Back", "password": PASSWORD},
    )
    assert response.status_code == 201


async def _client_for(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = await asyncio.to_thread(create_app, settings)  # building an app is sync work
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
    finally:
        await app.state.db.dispose()


async def test_refused_database_connection_answers_503() -> None:
    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    async for _, client in _client_for(settings):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "nobody@example.com", "name": "No", "password": PASSWORD},
        )
        assert response.status_code == 503
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("failed")


async def test_database_that_never_answers_gives_503_within_the_pool_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept the connection, never speak

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x", db_pool_timeout=0.5
    )
    try:
        async for _, client in _client_for(settings):
            async with asyncio.timeout(5):
                response = await client.get(
                    "/api/v1/users/me", headers={"Authorization": "Bearer x"}
                )
            # The token is rejected before the database is asked; registration needs it.
            assert response.status_code == 401
            async with asyncio.timeout(5):
                response = await client.post(
                    "/api/v1/auth/register",
                    json={"email": "stuck@example.com", "name": "S", "password": PASSWORD},
                )
            assert response.status_code == 503
    finally:
        server.close()
        await server.wait_closed()


@postgresql_only
async def test_statement_timeout_answers_503_and_keeps_the_row(
    settings: Settings, client: httpx.AsyncClient, app: FastAPI, make_user: object
) -> None:
    """A lock held elsewhere past DB_STATEMENT_TIMEOUT_MS cancels the statement: 503."""
    fast = settings.model_copy(update={"db_statement_timeout_ms": 300})
    user = await make_user(email="locked@example.com")  # type: ignore[operator]
    tokens = await login(client, "locked@example.com")
    async for _, timed_client in _client_for(fast):
        async with app.state.db.engine.connect() as blocker:
            await blocker.execute(text("BEGIN"))
            await blocker.execute(
                text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": user.id}
            )
            async with asyncio.timeout(5):
                response = await timed_client.patch(
                    "/api/v1/users/me", json={"name": "Renamed"}, headers=bearer(tokens)
                )
            await blocker.execute(text("ROLLBACK"))
        assert response.status_code == 503
    me = await client.get("/api/v1/users/me", headers=bearer(tokens))
    assert me.json()["name"] == "Test User"


async def _terminate_service_connections(database_url: str, pid: int | None = None) -> int:
    """Kill the connections the service holds to this database (or one), as a restart would."""
    admin = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            killed = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND application_name = 'accounts-service'"
                    " AND (CAST(:pid AS integer) IS NULL OR pid = :pid)"
                ),
                {"pid": pid},
            )
    finally:
        await admin.dispose()
    return int(killed or 0)


@postgresql_only
async def test_connections_killed_while_idle_are_replaced_unseen(
    settings: Settings, client: httpx.AsyncClient, make_user: object
) -> None:
    """After a database restart, pooled connections are pinged before use and replaced."""
    await make_user(email="idle@example.com")  # type: ignore[operator]
    tokens = await login(client, "idle@example.com")
    assert await _terminate_service_connections(direct_url(settings.database_url)) > 0
    await asyncio.sleep(session.PING_AFTER_IDLE_SECONDS + 0.1)
    me = await client.get("/api/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200, me.text
    renamed = await client.patch(
        "/api/v1/users/me", json={"name": "Still Here"}, headers=bearer(tokens)
    )
    assert renamed.status_code == 200, renamed.text


@postgresql_only
async def test_connection_killed_in_use_answers_503_once_and_is_replaced(
    settings: Settings, make_user: object
) -> None:
    """A connection that dies between two quick requests is not pinged (that would cost a round
    trip each time): its request answers 503, and the dead connection is not used again."""
    await make_user(email="hot@example.com")  # type: ignore[operator]
    async for app, client in _client_for(settings.model_copy(update={"db_pool_size": 1})):
        tokens = await login(client, "hot@example.com")
        async with app.state.db.engine.connect() as connection:  # the pool's only one
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 200
        assert await _terminate_service_connections(direct_url(settings.database_url), pid) == 1
        broken = await client.get("/api/v1/users/me", headers=bearer(tokens))
        if settings.db_transaction_pooler:
            # The killed one was PgBouncer's, idle in its pool: it takes another, unless the
            # request meets the dying one first (the one 503).
            assert broken.status_code in {200, 503}, broken.text
        else:
            assert broken.status_code == 503
            assert broken.headers["Retry-After"]
        again = await client.get("/api/v1/users/me", headers=bearer(tokens))
        assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), True),
        (asyncpg.exceptions.AdminShutdownError("restart"), True),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), True),
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), True),
        (asyncpg.exceptions.SerializationError("could not serialize access"), True),
        (asyncpg.exceptions.UndefinedColumnError("a bug"), False),
        (asyncpg.exceptions.UniqueViolationError("a bug"), False),
    ],
)
def test_driver_errors_are_unavailable_only_when_the_database_is(
    error: Exception, unavailable: bool
) -> None:
    assert is_unavailable(error) is unavailable


@postgresql_only
async def test_only_connections_idle_past_the_threshold_are_pinged(
    settings: Settings,
    app: FastAPI,
    client: httpx.AsyncClient,
    make_user: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_user(email="ping@example.com")  # type: ignore[operator]
    tokens = await login(client, "ping@example.com")
    dialect = app.state.db.engine.dialect
    pings: list[object] = []

    def counted_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return bool(type(dialect).do_ping(dialect, dbapi_connection))

    monkeypatch.setattr(dialect, "do_ping", counted_ping)
    for _ in range(2 * settings.db_pool_size):  # whatever sat idle since the login is pinged
        await client.get("/api/v1/users/me", headers=bearer(tokens))
    pings.clear()
    for _ in range(10):
        assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 200
    assert pings == []
    await asyncio.sleep(session.PING_AFTER_IDLE_SECONDS + 0.1)
    assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 200
    assert pings  # the job dispatcher's poll may have pinged one too
