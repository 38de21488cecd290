"""Real Celery workers on real brokers: processes of their own, talking to PostgreSQL."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from app.worker import create_celery
from tests.conftest import IN_CI, SmtpSink, empty_tables

ROOT = Path(__file__).resolve().parents[2]
BROKERS = {
    "redis": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "rabbitmq": os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}


def _reachable(url: str) -> bool:
    celery = create_celery(Settings(_env_file=None, broker_url=url))
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session", params=list(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    url = BROKERS[request.param]
    if not _reachable(url):
        if IN_CI:
            pytest.fail(f"CI needs the {request.param} broker at {url}")
        pytest.skip(f"{request.param} is not reachable at {url}")
    return url


@pytest.fixture
def celery_settings(settings: Settings, broker_url: str) -> Settings:
    return settings.model_copy(
        update={
            "broker_url": broker_url,
            "job_lease_seconds": 4.0,
            "job_poll_seconds": 0.2,
            "job_republish_seconds": 3.0,
        }
    )


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(
        DATABASE_URL=settings.database_url,
        DB_TRANSACTION_POOLER=str(settings.db_transaction_pooler).lower(),
        DATABASE_LISTEN_URL=settings.database_listen_url,
        BROKER_URL=settings.broker_url,
        SECRET_KEY=settings.secret_key,
        SMTP_HOST=settings.smtp_host,
        SMTP_PORT=str(settings.smtp_port),
        SMTP_TLS="false",
        PUBLIC_BASE_URL=settings.public_base_url,
        JOB_LEASE_SECONDS=str(settings.job_lease_seconds),
        JOB_RETRY_BASE_SECONDS=str(settings.job_retry_base_seconds),
        JOB_RETRY_MAX_SECONDS=str(settings.job_retry_max_seconds),
        DATA_DIR=str(settings.data_dir),
    )
    return env


class Worker:
    """`python -m app worker` as a real process group."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Forking the test process, large by now, takes 100 ms: a thread, not the loop."""
        self.process = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "app", "worker", "--concurrency", "2"],
            cwd=ROOT,
            env=worker_env(self.settings),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ready(self) -> None:
        """Wait until the worker answers a ping over the broker."""
        celery = await asyncio.to_thread(create_celery, self.settings)  # sync work: a thread
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(celery.control.ping, timeout=0.5):
                assert self.process is not None
                assert self.process.poll() is None, self.log.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the whole worker, children included: no chance to clean up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def worker(celery_settings: Settings, tmp_path: Path) -> Iterator[Worker]:
    celery = create_celery(celery_settings)
    celery.control.purge()  # nothing left over from an earlier test
    running = Worker(celery_settings, tmp_path / "worker.log")
    yield running
    running.stop()


@pytest.fixture
async def celery_app(celery_settings: Settings, smtp: SmtpSink) -> AsyncIterator[FastAPI]:
    """The API in Celery mode: its relay publishes jobs to the broker."""
    app = await asyncio.to_thread(create_app, celery_settings)
    async with app.router.lifespan_context(app):
        yield app
        await app.state.jobs.stop()
        await empty_tables(app)
