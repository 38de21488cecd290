"""Real processes of the service: `python -m app serve`, Celery workers, a private Redis.

Each runs in a process group of its own with its output in a log file, so a scenario can
SIGKILL it whole (children included) or SIGTERM only its leader, as `docker stop` would.
"""

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
SECRET_KEY = "reliability-secret-key-" + "r" * 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def service_env(
    *, database_url: str, smtp_port: int, data_dir: Path, broker_url: str = "", **settings: str
) -> dict[str, str]:
    """The caller's environment without any app setting, plus the service's own.

    Every job setting is at its production default (JOB_LEASE_SECONDS 60, JOB_REPUBLISH_SECONDS
    300): recovery is measured as an operator would meet it, not at shortened values that would
    hide a job waiting for a lease or the republish sweep.
    """
    app_variables = {name.upper() for name in Settings.model_fields}
    clean = {k: v for k, v in os.environ.items() if k not in app_variables}
    return (
        clean
        | {
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "SECRET_KEY": SECRET_KEY,
            "DATA_DIR": str(data_dir),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "SMTP_TLS": "false",
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            # Every registration of the stream comes from one client address.
            "RATE_LIMIT_ENABLED": "false",
            "ACCESS_LOG": "true",
            "LOG_LEVEL": "INFO",
        }
        | {name.upper(): value for name, value in settings.items()}
    )


class Service:
    """One process group, started and stopped at will; the log file accumulates across starts."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            output.write(f"\n===== start {self.starts + 1} of {self.name}\n".encode())
            output.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.log.parent,  # no .env of the project is read
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group: no chance to clean up."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)

    def terminate(self) -> None:
        """SIGTERM to the leader only, as an orchestrator stopping a container does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Whatever state it is in: TERM, then KILL; the group's stragglers too."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ({self.log}):\n{self.output()[-chars:]}"


class ApiServer(Service):
    """`python -m app serve --port P`; a restart listens on the same port."""

    def __init__(self, name: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "app", "serve", "--port", str(self.port)]
        super().__init__(name, argv, env, log)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_live(self, within: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.alive(), f"{self.name} exited early\n{self.tail()}"
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health/live")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not answer in {within} s\n{self.tail()}")


class CeleryWorker(Service):
    """A Celery worker of the app with a node name of its own.

    `python -m app worker` cannot pass `--hostname` on to Celery (its argparse REMAINDER
    refuses arguments that start with a dash), so two workers on one host would share the
    node name; `celery -A app.worker worker` runs the same Celery app and job code.
    """

    def __init__(self, name: str, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        self.node = f"{name}@%h"
        celery = str(Path(sys.executable).with_name("celery"))
        argv = [celery, "-A", "app.worker", "worker", "--hostname", self.node]
        argv += ["--concurrency", str(concurrency), "--loglevel", "INFO"]
        super().__init__(name, argv, env, log)

    async def wait_ready(self, within: float = START_TIMEOUT_S) -> None:
        """Until this start's log says the worker is consuming."""
        marker = f"===== start {self.starts} of {self.name}"
        pattern = re.compile(rf"{re.escape(self.name)}@\S+ ready\.")
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.alive(), f"{self.name} exited early\n{self.tail()}"
            if pattern.search(self.output().rpartition(marker)[2]):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} was not ready in {within} s\n{self.tail()}")


class RedisServer(Service):
    """A private redis-server without persistence: a restart comes back empty."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(log.parent)]
        super().__init__("redis", argv, dict(os.environ), log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def command(self, *words: str) -> bytes:
        """One inline command; the first line of the answer (RESP), e.g. b":42"."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(" ".join(words).encode() + b"\r\n")
            return (await reader.readline()).strip()
        finally:
            writer.close()

    async def wait_ready(self, within: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.alive(), f"redis exited early\n{self.tail()}"
            with contextlib.suppress(OSError):
                if await self.command("PING") == b"+PONG":
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"redis did not answer in {within} s\n{self.tail()}")
