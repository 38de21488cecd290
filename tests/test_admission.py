"""The admission gate: at most as many requests as the pool has connections, first come first
served, a 503 for whoever cannot get in within the pool timeout, and probes never queued."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from app.core.config import Settings
from app.main import create_app
from app.middleware import AdmissionMiddleware
from tests.conftest import bearer, login


class HeldApp:
    """An ASGI app whose requests wait until released, noting the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started.append(scope["path"])
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


async def _until(condition: object) -> None:
    async with asyncio.timeout(2):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def test_requests_beyond_the_limit_are_admitted_in_arrival_order() -> None:
    held = HeldApp()
    gate = AdmissionMiddleware(held, limit=2, timeout=5)
    async with _client(gate) as client:
        requests = []
        for i in range(8):
            requests.append(asyncio.create_task(client.get(f"/{i}")))
            await asyncio.sleep(0.005)  # each arrives, and queues, before the next
        await _until(lambda: len(held.started) == 2)
        await asyncio.sleep(0.05)
        assert held.started == ["/0", "/1"]  # the rest wait at the gate
        held.release.set()
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 8
    assert held.started == [f"/{i}" for i in range(8)]


async def test_a_request_not_admitted_in_time_gets_503_and_exempt_paths_pass() -> None:
    held = HeldApp()
    gate = AdmissionMiddleware(held, limit=1, timeout=0.2, exempt=("/health",))
    async with _client(gate) as client:
        first = asyncio.create_task(client.get("/slow"))
        await _until(lambda: held.started == ["/slow"])
        refused = await client.get("/waiting")
        probe = asyncio.create_task(client.get("/health/live"))
        await _until(lambda: "/health/live" in held.started)  # not queued behind /slow
        held.release.set()
        assert (await first).status_code == 200
        assert (await probe).status_code == 200
        after = await client.get("/after")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json() == {"detail": "The service is busy; try again shortly"}
    assert "/waiting" not in held.started
    assert after.status_code == 200  # the slot came back


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_service_admits_as_many_requests_as_its_pool_has_connections(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient, make_user: object
) -> None:
    """One connection: a request stuck on a row lock holds it, the next waits at the gate and
    gets a 503 after DB_POOL_TIMEOUT instead of starving in the pool; probes still answer."""
    user = await make_user(email="gate@example.com")  # type: ignore[operator]
    tokens = await login(client, "gate@example.com")
    tight = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout": 0.5}
    )
    single = await asyncio.to_thread(create_app, tight)
    try:
        async with _client(single) as tight_client, app.state.db.engine.connect() as blocker:
            await blocker.execute(text("BEGIN"))
            await blocker.execute(
                text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": user.id}
            )
            stuck = asyncio.create_task(
                tight_client.patch("/api/v1/users/me", json={"name": "X"}, headers=bearer(tokens))
            )
            await asyncio.sleep(0.2)  # the PATCH holds the only slot, waiting for the lock
            busy = await tight_client.get("/api/v1/users/me", headers=bearer(tokens))
            live = await tight_client.get("/health/live")
            await blocker.execute(text("ROLLBACK"))
            assert (await stuck).status_code == 200
            served = await tight_client.get("/api/v1/users/me", headers=bearer(tokens))
    finally:
        await single.state.db.dispose()
    assert busy.status_code == 503
    assert busy.json() == {"detail": "The service is busy; try again shortly"}
    assert live.status_code == 200
    assert served.status_code == 200
