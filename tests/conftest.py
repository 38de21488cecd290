"""Test fixtures: every test runs against SQLite and against PostgreSQL.

The schema is built once per backend by `alembic upgrade head`, so migrations are exercised.
Each test gets its own app with its real engine and pool (the app opens several connections at
once, which an outer rollback transaction could not cover); afterwards every table is emptied.
"""

import asyncio
import contextlib
import email
import email.policy
import gc
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from alembic import command
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.engine import make_url

from app.core import security
from app.core.config import Settings
from app.db.base import Base
from app.db.models import User
from app.main import create_app
from app.services import startup
from tests.loop_guard import LoopGuard
from tests.pgbouncer import PgBouncer

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/accounts_test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_TRUE = {"1", "true", "yes"}
# TEST_PGBOUNCER=1 (`make test-pgbouncer`): the app reaches PostgreSQL through a real
# PgBouncer in transaction mode started for this run (tests/pgbouncer.py) with
# DB_TRANSACTION_POOLER=true and DATABASE_LISTEN_URL the direct URL. Creating and dropping the
# database goes straight to the server; migrations go through PgBouncer, as an operator's
# `python -m app migrate` would. TEST_DB_TRANSACTION_POOLER=false keeps PgBouncer but turns
# the setting off, to see what it protects against.
THROUGH_PGBOUNCER = os.environ.get("TEST_PGBOUNCER", "").lower() in _TRUE
# Fewer server connections than one app's pool (DB_POOL_SIZE 5 in tests) has clients.
PGBOUNCER_POOL_SIZE = int(os.environ.get("TEST_PGBOUNCER_POOL_SIZE", "4"))
POOLER_SETTING = os.environ.get("TEST_DB_TRANSACTION_POOLER", "true").lower() in _TRUE
# A URL through PgBouncer -> the same database straight on the server.
DIRECT_URLS: dict[str, str] = {}
PASSWORD = "correct horse battery"


def _postgres_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    try:
        admin = await asyncpg.connect(_postgres_dsn(url, "postgres"), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"PostgreSQL at {url} is not reachable: {exc!r}") from exc
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@contextlib.contextmanager
def server_database(backend: str, directory: Path, label: str) -> Iterator[str]:
    """The URL of a fresh database for a server in a process of its own: a SQLite file in
    `directory`, or a PostgreSQL database named after `label` and this process (required in CI),
    dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'app.db'}"
        return
    base = make_url(POSTGRES_URL)
    url = base.set(database=f"{base.database}_{label}_{os.getpid()}")
    name = url.database
    try:
        asyncio.run(
            _admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
        )
    except ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"CI needs PostgreSQL: {exc}")
        pytest.skip(str(exc))
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of each backend; PostgreSQL is required in CI.

    Each test run gets a PostgreSQL database of its own, so parallel runs never collide.
    """
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
        command.upgrade(startup.alembic_config(make_settings(url)), "head")
        yield url
        return
    base = make_url(POSTGRES_URL)
    url = base.set(database=f"{base.database}_{os.getpid()}").render_as_string(hide_password=False)
    name = make_url(url).database
    assert name
    try:
        asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'))
    except ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"CI needs PostgreSQL: {exc}")
        pytest.skip(str(exc))
    with contextlib.ExitStack() as stack:
        if THROUGH_PGBOUNCER:
            bouncer = stack.enter_context(PgBouncer(url, pool_size=PGBOUNCER_POOL_SIZE))
            DIRECT_URLS[bouncer.url(name)] = url
            url = bouncer.url(name)
        command.upgrade(startup.alembic_config(make_settings(url)), "head")
        yield url
    asyncio.run(_admin(direct_url(url), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def direct_url(database_url: str) -> str:
    """The database of `database_url` straight on its server, for what a test does beside the
    app: inspecting server connections, holding locks, LISTEN (not through PgBouncer)."""
    return DIRECT_URLS.get(database_url, database_url)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "environment": "test",
        "secret_key": "test-secret-key-" + "x" * 32,
        "db_pool_size": 5,
        "db_max_overflow": 0,
        "db_pool_timeout": 2.0,
        # Retries in tests come within a fraction of a second.
        "job_retry_base_seconds": 0.05,
        "job_retry_max_seconds": 0.2,
        "job_shutdown_grace_seconds": 2.0,
        "public_base_url": "http://testserver",
        # The many tests that register and log in would trip the limits; their tests enable them.
        "rate_limit_enabled": False,
        # Nor does the hourly prune_history job enqueue itself in every test; its tests set it.
        "prune_interval_seconds": 0,
        "_env_file": None,
    }
    if database_url in DIRECT_URLS:
        values |= {
            "db_transaction_pooler": POOLER_SETTING,
            "database_listen_url": DIRECT_URLS[database_url],
        }
    return Settings(**(values | overrides))


class SmtpSink:
    """A real SMTP server's message handler (aiosmtpd), which can be told to refuse mail.

    aiosmtpd serves from a thread of its own; arrivals are signalled to the test's loop.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse_with: str | None = None  # a reply to DATA
        # A reply to RCPT; "{address}" in it becomes the recipient, as servers quote it.
        self.refuse_recipient_with: str | None = None
        # Set `stall`: the next delivery hangs mid-conversation until release(); `stalled` tells.
        self.stall = False
        self.stalled = asyncio.Event()
        self._release = threading.Event()
        self.port = 0
        self._arrived = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self.messages.clear()
        self.refuse_with = None
        self.refuse_recipient_with = None
        self.stall = False
        self.stalled = asyncio.Event()
        self._release = threading.Event()
        self._arrived = asyncio.Event()
        self._loop = loop

    def release(self) -> None:
        self._release.set()

    async def handle_RCPT(
        self, server: object, session: object, envelope: Envelope, address: str, options: object
    ) -> str:
        if self.refuse_recipient_with is not None:
            return self.refuse_recipient_with.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        if self.stall and self._loop is not None:
            self.stall = False
            self._loop.call_soon_threadsafe(self.stalled.set)
            await asyncio.get_running_loop().run_in_executor(None, self._release.wait, 60)
            return "451 4.3.0 Delivery interrupted"
        if self.refuse_with is not None:
            return self.refuse_with
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)
        return "250 Message accepted for delivery"

    async def wait_for(self, count: int) -> list[EmailMessage]:
        """The first `count` messages, once they have arrived (at most MAIL_WAIT_S)."""
        async with asyncio.timeout(MAIL_WAIT_S):
            while len(self.messages) < count:
                await self._arrived.wait()
                self._arrived.clear()
        return self.messages[:count]


MAIL_WAIT_S = 15.0


@pytest.fixture(scope="session")
def smtp_controller() -> Iterator[tuple[Controller, SmtpSink]]:
    sink = SmtpSink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink.port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield controller, sink
    controller.stop()


@pytest.fixture
async def smtp(smtp_controller: tuple[Controller, SmtpSink]) -> SmtpSink:
    """The test SMTP server, emptied and accepting mail."""
    sink = smtp_controller[1]
    sink.reset(asyncio.get_running_loop())
    return sink


@pytest.fixture
def settings(database_url: str, tmp_path: Path, smtp: SmtpSink) -> Settings:
    return make_settings(
        database_url,
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_tls=False,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The application with its lifespan running; fails the test if a connection leaked."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app
        await app.state.jobs.stop()  # background work must not count as a leak
        checked_out = app.state.db.engine.pool.checkedout()
        await empty_tables(app)
        assert checked_out == 0, f"{checked_out} connection(s) still checked out after the test"


async def empty_tables(app: FastAPI) -> None:
    async with app.state.db.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


MakeUser = Callable[..., Awaitable[User]]
_hashes: dict[str, str] = {}


async def _hashed(password: str) -> str:
    """Argon2 once per password per test run: most tests make users with the same one."""
    if password not in _hashes:
        _hashes[password] = await security.hash_password(password)
    return _hashes[password]


@pytest.fixture
def make_user(app: FastAPI) -> MakeUser:
    """Insert a user directly, without the welcome email a registration enqueues; keyword
    arguments set model fields."""

    async def make(
        email: str | None = None, password: str = PASSWORD, name: str = "Test User", **fields: Any
    ) -> User:
        user = User(
            email=User.normalize_email(email or f"user-{uuid.uuid4().hex[:12]}@example.com"),
            name=name,
            hashed_password=await _hashed(password),
            **fields,
        )
        async with app.state.db.transaction() as session:
            session.add(user)
        return user

    return make


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/token", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


# --- guard: a test fails when it blocks the event loop for 100 ms or more (tests/loop_guard.py)

_loop_guard = LoopGuard()


def pytest_configure(config: pytest.Config) -> None:
    _loop_guard.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # Only the test body counts: fixtures build apps and migrate schemas synchronously. The
    # cyclic garbage collector waits until the body is over: a full collection of the test
    # process's heap takes 100-300 ms here, a pause of the test runner, not of the app.
    # Tests whose app runs in a server process of its own have only the test's client here.
    watched = not item.get_closest_marker("app_in_another_process")
    gc.disable()
    try:
        if not watched:
            return (yield)
        with _loop_guard:
            return (yield)
    finally:
        gc.enable()


@pytest.fixture
def loop_guard() -> LoopGuard:
    """The guard itself, for the tests that check what it reports."""
    return _loop_guard


@pytest.fixture(autouse=True)
def event_loop_not_blocked() -> Iterator[None]:
    _loop_guard.take_reports()
    yield
    reports = _loop_guard.take_reports()
    assert not reports, "event loop blocked:\n" + "\n".join(reports)
