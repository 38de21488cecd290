"""A database that is exhausted, gone or stuck answers 503 quickly, never a hang or a 500."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.core.config import Settings
from app.main import create_app
from tests.conftest import PASSWORD, bearer, login, make_settings

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


async def _client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = await asyncio.to_thread(create_app, settings)  # building an app is sync work
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await app.state.db.dispose()


async def test_refused_database_connection_answers_503() -> None:
    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    async for client in _client_for(settings):
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
        async for client in _client_for(settings):
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
    async for timed_client in _client_for(fast):
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
