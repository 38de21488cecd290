"""Starting and stopping the processes under test: each a real subprocess in its own session."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery

from app.core.config import Settings
from bench import system

ROOT = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).parent / "hooks"
BROKER_URL = "redis://127.0.0.1:6379/13"
SECRET_KEY = "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's settings, so nothing set by
    whoever runs the bench leaks into a measured configuration."""
    names = {name.upper() for name in Settings.model_fields}
    return {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and not k.upper().startswith("OTEL_")  # tracing: bench/tracing
    }


def service_environment(
    database_url: str, *, data_dir: Path, smtp_port: int, broker_url: str = "", **extra: str
) -> dict[str, str]:
    return {
        **clean_environment(),
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET_KEY,
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
        "DATA_DIR": str(data_dir),
        "BROKER_URL": broker_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_TLS": "false",
        # Tokens are fetched once per configuration; they must outlive its points.
        "ACCESS_TOKEN_EXPIRE_MINUTES": "600",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{HOOKS}",
        **extra,
    }


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    peak_rss_kib: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        return system.tree(self.pid) if self.popen.poll() is None else []

    def record_peak_rss(self) -> None:
        """Keep VmHWM of every process of the tree, read while they are alive."""
        for pid in self.pids():
            self.peak_rss_kib[pid] = max(self.peak_rss_kib.get(pid, 0), system.peak_rss_kib(pid))

    def stop(self, grace_s: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.record_peak_rss()
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace_s)
        # Whatever is left of the process group it leads (a stuck pool process, say).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def fail_if_dead(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")


def start(name: str, argv: list[str], env: dict[str, str], logs: Path, port: int = 0) -> Process:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, popen, log, port)


def wait_until(process: Process, ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.fail_if_dead()
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} was not ready within {timeout_s:g} s")


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        return httpx.get(url, timeout=2.0).status_code < 500

    return ready


def port_open(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True

    return ready


def start_api(env: dict[str, str], *, workers: int, logs: Path, name: str = "api") -> Process:
    port = system.free_port()
    argv = [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)]
    process = start(name, argv, env, logs, port)
    wait_until(process, http_ready(f"http://127.0.0.1:{port}/health/ready"), timeout_s=90)
    return process


def start_baseline(dsn: str, *, workers: int, logs: Path) -> Process:
    port = system.free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline.app:app",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {**clean_environment(), "BENCH_DSN": dsn, "PYTHONPATH": str(ROOT)}
    process = start(f"baseline-{workers}w", argv, env, logs, port)
    probe = f"http://127.0.0.1:{port}/users/00000000-0000-0000-0000-000000000000"
    wait_until(process, http_ready(probe))
    return process


def start_smtp_sink(out: Path, *, logs: Path) -> Process:
    port = system.free_port()
    argv = [sys.executable, "-m", "bench.smtp_sink", str(port), str(out)]
    process = start("smtp-sink", argv, {**os.environ, "PYTHONPATH": str(ROOT)}, logs, port)
    wait_until(process, port_open(port))
    return process


def celery_workers_answering(broker_url: str, expected: int) -> Callable[[], bool]:
    probe = Celery("bench_probe", broker=broker_url, set_as_current=False)

    def ready() -> bool:
        return len(probe.control.ping(timeout=1.0) or []) >= expected

    return ready


def start_worker(env: dict[str, str], *, concurrency: int, logs: Path) -> Process:
    argv = [sys.executable, "-m", "app", "worker", "--concurrency", str(concurrency)]
    process = start(f"worker-{concurrency}p", argv, env, logs)
    wait_until(process, celery_workers_answering(env["BROKER_URL"], 1))
    return process


def start_raw_celery(*, concurrency: int, logs: Path) -> Process:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.raw_celery",
        "worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "-Q",
        "bench-raw",
    ]
    env = {**clean_environment(), "BENCH_BROKER_URL": BROKER_URL, "PYTHONPATH": str(ROOT)}
    process = start(f"raw-celery-{concurrency}p", argv, env, logs)
    wait_until(process, celery_workers_answering(BROKER_URL, 1))
    return process
