"""Rate limits on register and forgot-password (per client and per email, every request), 429
with Retry-After, counters in this process or shared through Redis, and open when Redis is down.
The limits on failures (login, refresh, links, password changes) are in test_rate_limits_wire."""

import asyncio
import ipaddress
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.config import ConfigError, Settings, load_settings
from app.db.models import User
from app.main import create_app
from tests.conftest import PASSWORD, empty_tables
from tests.limits import require_redis

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
FORGOT = "/api/v1/auth/forgot-password"
LIMIT = 3

StartApp = Callable[..., Awaitable[FastAPI]]


@pytest.fixture
async def start_app(settings: Settings) -> AsyncIterator[StartApp]:
    """Starts apps with every limit at LIMIT per minute (and any overrides); stops them after."""

    async def stop(app: FastAPI) -> None:
        await app.state.jobs.stop()  # background work must not count as a leak
        checked_out = app.state.db.engine.pool.checkedout()
        await empty_tables(app)
        assert checked_out == 0, f"{checked_out} connection(s) still checked out after the test"

    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> FastAPI:
            limit = f"{LIMIT}/minute"
            values: dict[str, Any] = {
                "rate_limit_enabled": True,
                "rate_limit_register": limit,
                "rate_limit_token": limit,
                "rate_limit_forgot": limit,
                "redis_url": "",
                "broker_url": "",
            }
            app = await asyncio.to_thread(
                create_app, settings.model_copy(update=values | overrides)
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            stack.push_async_callback(stop, app)
            return app

        yield start


@pytest.fixture
async def redis_url() -> str:
    return await require_redis()


async def post(app: FastAPI, url: str, client: str = "10.0.0.1", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post(url, **kwargs)


def signup(email: str) -> dict[str, Any]:
    return {"json": {"email": email, "name": "Ada Lovelace", "password": PASSWORD}}


def forgot(email: str) -> dict[str, Any]:
    return {"json": {"email": email}}


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def count_users(app: FastAPI) -> int:
    async with app.state.db.transaction() as session:
        return await session.scalar(select(func.count()).select_from(User)) or 0


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert set(response.json()) == {"detail"}


# --- register -----------------------------------------------------------------------------


async def test_register_limits_a_client_whatever_the_email(start_app: StartApp) -> None:
    app = await start_app()
    for _ in range(LIMIT):
        assert (await post(app, REGISTER, **signup(unique_email()))).status_code == 201

    assert_limited(await post(app, REGISTER, **signup(unique_email())))
    assert await count_users(app) == LIMIT  # the refused request created nobody
    assert (await post(app, REGISTER, "10.0.0.2", **signup(unique_email()))).status_code == 201


async def test_register_limits_an_email_whatever_the_client(start_app: StartApp) -> None:
    app = await start_app()
    spellings = ["ada@example.com", "Ada@Example.com", "ADA@EXAMPLE.COM"]
    answers = [
        (await post(app, REGISTER, f"10.0.0.{n}", **signup(email))).status_code
        for n, email in enumerate(spellings, start=1)
    ]
    assert answers == [201, 409, 409]

    assert_limited(await post(app, REGISTER, "10.0.0.9", **signup("ada@example.com")))
    assert (await post(app, REGISTER, "10.0.0.9", **signup(unique_email()))).status_code == 201


# --- forgot-password ----------------------------------------------------------------------


async def test_forgot_password_answers_202_until_the_client_is_limited(
    start_app: StartApp,
) -> None:
    app = await start_app()
    for _ in range(LIMIT):
        assert (await post(app, FORGOT, **forgot(unique_email()))).status_code == 202

    assert_limited(await post(app, FORGOT, **forgot(unique_email())))


async def test_forgot_password_limits_an_email_from_many_clients(start_app: StartApp) -> None:
    app = await start_app()
    for n in range(1, LIMIT + 1):
        accepted = await post(app, FORGOT, f"10.0.0.{n}", **forgot("X@example.com"))
        assert accepted.status_code == 202

    assert_limited(await post(app, FORGOT, "10.0.0.9", **forgot("x@example.com")))


# --- configuration and storage ------------------------------------------------------------


async def test_no_limit_when_rate_limits_are_disabled(start_app: StartApp) -> None:
    app = await start_app(rate_limit_enabled=False)
    answers = [(await post(app, FORGOT, **forgot("x@example.com"))).status_code for _ in range(8)]
    assert answers == [202] * 8


async def test_apps_sharing_a_redis_share_the_counters(start_app: StartApp, redis_url: str) -> None:
    # Keys unique to this test, so that other tests and parallel runs on the same Redis
    # database never touch its counters (and nothing needs flushing).
    email, client = unique_email(), str(ipaddress.IPv6Address(uuid.uuid4().int))
    first, second = await start_app(redis_url=redis_url), await start_app(redis_url=redis_url)
    answers = [
        (await post(app, FORGOT, client, **forgot(email))).status_code
        for app in (first, second, first)
    ]
    assert answers == [202] * LIMIT

    assert_limited(await post(app=second, url=FORGOT, client=client, **forgot(email)))


async def test_requests_pass_when_redis_is_down(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    app = await start_app(redis_url=f"redis://127.0.0.1:{closed_port}/0")

    with caplog.at_level(logging.WARNING, logger="app.services.rate_limits"):
        answers = [
            (await post(app, FORGOT, **forgot("x@example.com"))).status_code
            for _ in range(LIMIT + 2)
        ]

    assert answers == [202] * (LIMIT + 2)
    warnings = [r for r in caplog.records if r.name == "app.services.rate_limits"]
    assert len(warnings) == 1  # once per outage, not once per request
    assert "unavailable" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_TOKEN", "lots"),
        ("RATE_LIMIT_TOKEN", "0/minute"),
        ("RATE_LIMIT_TOKEN_EMAIL", "many/hour"),
        ("RATE_LIMIT_PASSWORD_CHANGE", "0/hour"),
    ],
)
def test_a_bad_rate_limit_stops_the_start_naming_the_variable(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"^{name} .*'"):
        load_settings()


@pytest.mark.parametrize("value", ["10.0.0.1, proxy.internal", "300.1.2.3"])
def test_a_bad_forwarded_allow_ips_stops_the_start(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", value)
    with pytest.raises(ConfigError, match=r"^FORWARDED_ALLOW_IPS: '.*' is not an address"):
        load_settings()


def test_forwarded_allow_ips_takes_addresses_networks_and_star(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.0.0/16, ::1, *")
    assert load_settings().forwarded_allow_ips == "10.1.0.0/16, ::1, *"
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    assert load_settings().forwarded_allow_ips == "127.0.0.1,::1"  # loopback only
