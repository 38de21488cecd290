"""Slow and large requests against a real `python -m app serve`, on the wire with raw sockets.

A client holds an admission slot only while the service works for it: uploads that trickle in
wait outside the gate until their deadline (408), oversized bodies are refused unread (413),
and idle connections and slow request heads are closed. "Other clients" connect from other
loopback addresses (127.0.0.2 and up).
"""

import asyncio
import contextlib
import itertools
import os
import random
import signal
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.server import MAX_HEAD_BYTES
from tests.api.test_operations import samples
from tests.conftest import PASSWORD, server_database
from tests.test_graceful_shutdown import start_server

pytestmark = pytest.mark.app_in_another_process  # every server here is `python -m app serve`

MAX_BODY = 64 * 1024
ANSWER_WAIT_S = 30  # far beyond every deadline involved: a bound, not a measurement
TRICKLERS = 100
REGISTER_HEAD = (
    "POST /api/v1/auth/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
)


@contextlib.contextmanager
def _serving(backend: str, work: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """(host, port) of `python -m app serve` on a fresh database of that backend."""
    app_variables = {name.upper() for name in Settings.model_fields}
    clean = {name: value for name, value in os.environ.items() if name not in app_variables}
    with server_database(backend, work, "hostile") as url:
        env = clean | {
            "DATABASE_URL": url,
            "DATA_DIR": str(work / "data"),
            "PYTHONPATH": str(Path(__file__).parents[1]),
            "RATE_LIMIT_ENABLED": "false",
            "ACCESS_LOG": "false",
            **settings,
        }
        process, base_url = start_server(env, work, work / "serve.log", workers=1)
        try:
            host, port = base_url.removeprefix("http://").split(":")
            yield host, int(port)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """The service on each backend: five admission slots, 1 s to get one, a body cap of 64 KiB,
    and a body deadline the other clients' work fits in, even on a busy machine."""
    work = tmp_path_factory.mktemp(f"server-{request.param}")
    with _serving(
        request.param,
        work,
        DB_POOL_SIZE="5",
        DB_POOL_TIMEOUT="1",
        MAX_BODY_BYTES=str(MAX_BODY),
        REQUEST_BODY_TIMEOUT_SECONDS="20",
    ) as address:
        yield address


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Deadlines of 1 s for the head and the body. Connection handling, before any route or
    database is involved: one backend."""
    work = tmp_path_factory.mktemp("strict-server")
    with _serving("sqlite", work, REQUEST_BODY_TIMEOUT_SECONDS="1") as address:
        yield address


class Wire(asyncio.Protocol):
    """A raw client connection that keeps every byte received, even when the server resets
    the connection after its answer (it does when the client is still sending)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def answer(self) -> tuple[int, bytes]:
        """The status and all the server sent, once it closed the connection."""
        async with asyncio.timeout(ANSWER_WAIT_S):
            await asyncio.shield(self.closed)
        received = bytes(self.received)
        status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0
        return status, received

    async def trickle(self) -> None:
        """A byte every half second, until the server closes the connection."""
        while not self.closed.done():
            await asyncio.sleep(0.5)
            if not self.closed.done():
                self.send(b" ")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(address: tuple[str, int], source: str = "127.0.0.2") -> Wire:
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(Wire, *address, local_addr=(source, 0))
    return wire


async def _register_and_read(client: httpx.AsyncClient, number: int) -> list[int]:
    email = f"normal-{number}@example.com"
    registered = await client.post(
        "/api/v1/auth/register", json={"email": email, "name": "N", "password": PASSWORD}
    )
    tokens = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    me = await client.get(
        "/api/v1/users/me",
        headers={"Authorization": f"Bearer {tokens.json().get('access_token')}"},
    )
    return [registered.status_code, tokens.status_code, me.status_code]


async def test_100_trickling_uploads_hold_no_slot_while_others_register_and_read(
    server: tuple[str, int],
) -> None:
    """Before, each upload held one of the five slots while it trickled, and everyone else got
    503 after DB_POOL_TIMEOUT (1 s). Now they wait outside the gate, get 408 at their deadline
    and are disconnected."""
    uploads = []
    for i in range(TRICKLERS):
        wire = await _connect(server, source=f"127.0.0.{2 + i % 10}")
        wire.send(f"{REGISTER_HEAD}Content-Length: {MAX_BODY}\r\n\r\n{{".encode())
        uploads.append((wire, asyncio.create_task(wire.trickle())))
    base_url = f"http://{server[0]}:{server[1]}"
    async with httpx.AsyncClient(base_url=base_url, timeout=ANSWER_WAIT_S) as client:
        assert (await client.get("/health/live")).status_code == 200  # the heads are in
        outcomes = await asyncio.gather(*(_register_and_read(client, n) for n in range(10)))
    still_uploading = sum(not wire.closed.done() for wire, _ in uploads)
    finished = await asyncio.gather(*(wire.answer() for wire, _ in uploads))
    for wire, trickling in uploads:
        await trickling
        wire.close()

    assert outcomes == [[201, 200, 200]] * 10
    assert still_uploading == TRICKLERS  # they were held open all along
    assert {status for status, _ in finished} == {408}
    assert all(b"connection: close" in received for _, received in finished)


async def test_a_declared_oversize_body_is_refused_unread(server: tuple[str, int]) -> None:
    wire = await _connect(server)
    wire.send(
        f"{REGISTER_HEAD}Content-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    status, received = await wire.answer()
    assert status == 413
    assert b"100 Continue" not in received  # so the client never sent the body
    assert b'"The request body is too large"' in received


async def test_a_chunked_body_is_refused_once_it_passes_the_cap(server: tuple[str, int]) -> None:
    wire = await _connect(server)
    wire.send(f"{REGISTER_HEAD}Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"  # 16 KiB each
    sent = 0
    while not wire.received and not wire.closed.done() and sent < 4 * MAX_BODY:
        wire.send(chunk)
        sent += 0x4000
        await asyncio.wait({wire.closed}, timeout=0.2)  # the server reads each chunk
    status, _ = await wire.answer()
    assert status == 413
    assert MAX_BODY < sent < 4 * MAX_BODY  # refused past the cap, before the end


async def test_a_slow_request_head_is_cut_off(strict_server: tuple[str, int]) -> None:
    """Each byte used to restart uvicorn's idle clock: a head sent a byte at a time was never
    cut off. Now it has the head deadline (1 s here), for the whole head."""
    wire = await _connect(strict_server)
    wire.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    trickling = asyncio.create_task(wire.trickle())
    status, received = await wire.answer()
    await trickling
    assert status == 408
    assert b"connection: close" in received


async def test_a_silent_connection_is_closed(strict_server: tuple[str, int]) -> None:
    wire = await _connect(strict_server)
    assert await wire.answer() == (0, b"")  # closed without a word (uvicorn kept it open)


async def test_an_idle_keep_alive_connection_is_closed(strict_server: tuple[str, int]) -> None:
    wire = await _connect(strict_server)
    wire.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
    status, received = await wire.answer()
    assert status == 200
    assert received.endswith(b'{"status":"ok"}')  # answered, then closed once idle


async def test_an_oversized_request_head_is_refused(strict_server: tuple[str, int]) -> None:
    wire = await _connect(strict_server)
    filler = b"X-Filler: " + b"f" * (MAX_HEAD_BYTES + 1000) + b"\r\n"
    # All at once: the server reads it whole, so its close is not a reset that drops the 431.
    wire.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\n" + filler)
    status, _ = await wire.answer()
    assert status == 431


async def test_a_body_not_complete_in_time_gets_408(strict_server: tuple[str, int]) -> None:
    wire = await _connect(strict_server)
    wire.send(f"{REGISTER_HEAD}Content-Length: 100\r\n\r\n{{".encode())
    status, received = await wire.answer()
    assert status == 408
    assert b'"The request body did not arrive in time"' in received


PATHS = [
    "/admin/statics/{}",
    "/admin/user/edit/{}",  # an empty {pk} among them
    "/admin/{}/list",
    "/admin/{}",
    "/api/v1/users/{}",
    "/api/v1/jobs/{}",
    "/static/docs/{}",
    "/{}",
    "/{}/{}",
]
METHODS = ["GET", "POST", "DELETE", "PROPFIND", "PURGE"]
WORD = string.ascii_letters + string.digits + "-_~%"  # no dots: the client would drop ./..


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    names = ("http_requests_total", "http_request_duration_seconds_count")
    return {(name, labels) for name in names for labels in samples(text, name)}


async def test_10000_random_paths_and_methods_add_no_metric_series(
    strict_server: tuple[str, int],
) -> None:
    """Once each kind of request was answered (an empty and a non-empty segment, each method),
    10,000 random ones of those kinds add no series: no label value comes from the path."""
    rng = random.Random(11)
    base_url = f"http://{strict_server[0]}:{strict_server[1]}"
    async with httpx.AsyncClient(base_url=base_url, timeout=ANSWER_WAIT_S) as client:
        for path, method, word in itertools.product(PATHS, METHODS, ["", "x"]):
            await client.request(method, path.format(word, word))
        await client.get("/metrics")
        before = _series((await client.get("/metrics")).text)

        async def ask(count: int) -> None:
            for _ in range(count):
                word = "".join(rng.choices(WORD, k=rng.randint(0, 24)))
                await client.request(rng.choice(METHODS), rng.choice(PATHS).format(word, word))

        await asyncio.gather(*(ask(1_000) for _ in range(10)))
        after = _series((await client.get("/metrics")).text)
    assert after == before
    routes = {dict(labels)["route"] for _, labels in after}
    assert "/admin/statics/{path}" in routes
    assert {dict(labels)["method"] for _, labels in after} <= {"GET", "POST", "DELETE", "OTHER"}
