"""SIGTERM to a real `python -m app serve` under load: in-flight requests finish, none is lost.

One registration is held in the application at SIGTERM for certain: its headers went out with
`Expect: 100-continue`, the server's "100 Continue" shows the application has begun reading its
body, and the body follows only after the signal. It must be answered 201.

Every other request either gets its whole answer or was never seen by the application: refused (the
listening socket had closed) or dropped unread (the server closed an idle keep-alive connection
just as the client reused it, or a connection waited in the backlog of a socket nobody accepts
from any more). "Never seen" is proven from the server's side: the request id is in no log line
and the registration is not in the database. Each registration that was answered 201 is in the
database with its welcome job, queued or done.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.db.models import Job, JobStatus, User
from app.services import tasks
from tests.conftest import PASSWORD, server_database

ROOT = Path(__file__).parents[1]
CLIENTS = 32
# SIGTERM goes out once this many answers came back; no client can run out of work before.
ANSWERS_BEFORE_SIGTERM = 64
REQUESTS_PER_CLIENT = 40
REQUEST_TIMEOUT_S = 60
SHUTDOWN_GRACE_S = 20
JOB_SHUTDOWN_GRACE_S = 5
EXIT_TIMEOUT_S = SHUTDOWN_GRACE_S + JOB_SHUTDOWN_GRACE_S + 30


@dataclass
class Sent:
    kind: Literal["register", "live"]
    request_id: str
    email: str
    before_sigterm: bool
    in_flight_at_sigterm: bool = False
    status: int | None = None
    error: Exception | None = None

    @property
    def outcome(self) -> str:
        if self.status is not None:
            return f"answered {self.status}"
        if isinstance(self.error, httpx.ConnectError):
            return "refused"
        if isinstance(self.error, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
            return "dropped unread"
        return f"failed: {self.error!r}"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with server_database(request.param, tmp_path, "shutdown") as url:
        yield url


@pytest.fixture
def env(tmp_path: Path, fresh_database_url: str) -> dict[str, str]:
    """The caller's environment without any app setting, plus the server's own."""
    app_variables = {name.upper() for name in Settings.model_fields}
    clean = {name: value for name, value in os.environ.items() if name not in app_variables}
    return clean | {
        "DATABASE_URL": fresh_database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_S),
        "JOB_SHUTDOWN_GRACE_SECONDS": str(JOB_SHUTDOWN_GRACE_S),
        # All the load comes from one address.
        "RATE_LIMIT_ENABLED": "false",
        # The access lines carry the request ids that prove which requests the server saw.
        "ACCESS_LOG": "true",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start_server(
    env: dict[str, str], cwd: Path, log: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    migrate = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the signal goes to the parent only, as `docker stop` does
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
        try:
            if httpx.get(f"{base_url}/health/live", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"serve did not answer within 30 s:\n{log.read_text()}")


class HeldRegistration:
    """A registration on a raw connection, stopped half-way: the server is reading its body."""

    def __init__(self, base_url: str) -> None:
        self.url = httpx.URL(base_url)
        self.request = Sent(
            "register",
            request_id=f"shutdown-held-{uuid.uuid4().hex[:8]}",
            email=f"held-{uuid.uuid4().hex[:6]}@example.com",
            before_sigterm=True,
            in_flight_at_sigterm=True,
        )
        body = {"email": self.request.email, "name": "Held", "password": PASSWORD}
        self.body = json.dumps(body).encode()

    async def begin(self) -> None:
        """Send the head and wait for "100 Continue": the application has asked for the body."""
        assert self.url.port is not None
        self.reader, self.writer = await asyncio.open_connection(self.url.host, self.url.port)
        self.writer.write(
            b"POST /api/v1/auth/register HTTP/1.1\r\n"
            b"Host: %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Expect: 100-continue\r\n"
            b"X-Request-ID: %s\r\n\r\n"
            % (self.url.host.encode(), len(self.body), self.request.request_id.encode())
        )
        await self.writer.drain()
        interim = await self.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim

    async def finish(self) -> None:
        """Send the body and read the whole answer; the server closes the connection after it."""
        self.writer.write(self.body)
        await self.writer.drain()
        try:
            answer = await self.reader.read()
        except OSError as exc:
            self.request.error = httpx.ReadError(str(exc))
            return
        finally:
            self.writer.close()
        status_line, _, _ = answer.partition(b"\r\n")
        if status_line:
            self.request.status = int(status_line.split()[1])
        else:
            self.request.error = httpx.RemoteProtocolError("closed without an answer")


async def load_and_terminate(base_url: str, process: subprocess.Popen[bytes]) -> list[Sent]:
    """CLIENTS clients alternating registrations and liveness checks; SIGTERM in the middle,
    with one registration held inside the application."""
    sent: list[Sent] = []
    terminated = False
    enough_answers = asyncio.Event()
    answers = 0

    async def hammer(client: httpx.AsyncClient, number: int) -> None:
        nonlocal answers
        for i in range(REQUESTS_PER_CLIENT):
            kind: Literal["register", "live"] = "register" if (number + i) % 2 else "live"
            request = Sent(
                kind,
                request_id=f"shutdown-{number}-{i}-{uuid.uuid4().hex[:8]}",
                email=f"load-{number}-{i}-{uuid.uuid4().hex[:6]}@example.com",
                before_sigterm=not terminated,
            )
            sent.append(request)
            headers = {"X-Request-ID": request.request_id}
            try:
                if kind == "register":
                    body = {"email": request.email, "name": "Load", "password": PASSWORD}
                    response = await client.post(
                        "/api/v1/auth/register", json=body, headers=headers
                    )
                else:
                    response = await client.get("/health/live", headers=headers)
            except httpx.TransportError as exc:
                request.error = exc
                return  # refused or dropped: the server is going away (or the test fails)
            request.status = response.status_code
            answers += 1
            if answers >= ANSWERS_BEFORE_SIGTERM:
                enough_answers.set()

    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        clients = [asyncio.create_task(hammer(client, n)) for n in range(CLIENTS)]
        held = HeldRegistration(base_url)
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await enough_answers.wait()
            await held.begin()
        for request in sent:
            request.in_flight_at_sigterm = request.status is None and request.error is None
        process.send_signal(signal.SIGTERM)
        terminated = True
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await held.finish()
        await asyncio.gather(*clients)
    return [*sent, held.request]


async def registrations(database_url: str) -> tuple[set[str], dict[str, list[JobStatus]]]:
    """The emails in the database, and the statuses of the welcome jobs by user id."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            users = (await connection.execute(select(User.id, User.email))).all()
            jobs = (
                await connection.execute(
                    select(Job.payload, Job.status).where(Job.name == tasks.send_welcome_email.name)
                )
            ).all()
    finally:
        await engine.dispose()
    welcome: dict[str, list[JobStatus]] = {}
    for payload, status in jobs:
        welcome.setdefault(payload["user_id"], []).append(status)
    return {email for _, email in users}, {
        str(user_id): welcome.get(str(user_id), []) for user_id, _ in users
    }


def report(sent: list[Sent]) -> str:
    def tally(requests: list[Sent]) -> str:
        counts = Counter(f"{r.kind} {r.outcome}" for r in requests)
        return ", ".join(f"{count} {what}" for what, count in sorted(counts.items()))

    in_flight = [r for r in sent if r.in_flight_at_sigterm]
    after = [r for r in sent if not r.before_sigterm]
    return (
        f"{len(sent)} requests: {tally(sent)}\n"
        f"in flight at SIGTERM: {len(in_flight)}: {tally(in_flight)}\n"
        f"sent after SIGTERM: {len(after)}: {tally(after)}"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_finishes_in_flight_requests_and_loses_none(
    env: dict[str, str], tmp_path: Path, fresh_database_url: str, workers: int
) -> None:
    log_path = tmp_path / "serve.log"
    process, base_url = start_server(env, tmp_path, log_path, workers)
    try:
        sent = asyncio.run(load_and_terminate(base_url, process))
        # uvicorn re-raises the signal once it has shut down, so a lone server's status is the
        # signal's; the supervisor of several workers exits with 0.
        returncode = process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(EXIT_TIMEOUT_S)
    log = log_path.read_text()
    summary = report(sent)
    print(f"\n[{workers} worker(s)] {summary}")

    assert returncode in (0, -signal.SIGTERM), log
    assert log.count("Application shutdown complete") == workers, log
    assert "graceful shutdown exceeded" not in log, log
    assert "Traceback" not in log, log

    held = sent[-1]
    assert held.status == 201, f"the registration held in the application at SIGTERM: {summary}"

    unanswered = [r for r in sent if r.status is None]
    assert all(r.outcome in ("refused", "dropped unread") for r in unanswered), summary
    # Before SIGTERM every request is answered.
    assert not [r for r in unanswered if r.before_sigterm and not r.in_flight_at_sigterm], summary
    expected = {"register": 201, "live": 200}
    assert all(r.status == expected[r.kind] for r in sent if r.status is not None), summary

    # The server's side: it logged every request it answered and none of those it never saw.
    answered = [r for r in sent if r.status is not None]
    assert all(r.request_id in log for r in answered), "answered requests missing from the log"
    seen_but_unanswered = [r.outcome for r in unanswered if r.request_id in log]
    assert not seen_but_unanswered, f"the server saw requests whose answer was lost: {summary}"

    # Every registration that was committed was answered 201, and its welcome job is queued
    # (handed back, or not yet claimed) or done.
    emails, welcome_jobs = asyncio.run(registrations(fresh_database_url))
    assert emails == {r.email for r in sent if r.status == 201}, summary
    print(
        f"welcome jobs: {Counter(str(s) for statuses in welcome_jobs.values() for s in statuses)}"
    )
    for user_id, statuses in welcome_jobs.items():
        assert len(statuses) == 1, (user_id, statuses)
        assert statuses[0] in (JobStatus.QUEUED, JobStatus.SUCCEEDED), (user_id, statuses)
