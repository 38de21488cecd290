"""One configuration of the service under test: a fresh database, its API and Celery worker."""

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench import code, database, services
from bench.services import BROKER_URL, Process


@dataclass(frozen=True)
class Workspace:
    root: Path  # bench/.work: databases, logs, request files
    smtp_port: int
    mail_log: Path  # what the SMTP sink received

    @property
    def logs(self) -> Path:
        return self.root / "logs"


@dataclass
class Deployment:
    backend: str  # pg-embedded | pg-celery | sqlite
    workers: int
    database_url: str
    api: Process
    worker: Process | None
    seeded: database.Seeded
    tokens: list[str]
    app_digest: str  # app/ as it was when the processes started

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def processes(self) -> list[Process]:
        return [self.api] + ([self.worker] if self.worker else [])

    async def wait_for_jobs(self, timeout_s: float = 120.0) -> float:
        """Seconds until no job is queued or running (the backlog drained), at most timeout_s."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            counts = await database.job_counts(self.database_url)
            if counts.get("queued", 0) + counts.get("running", 0) == 0:
                break
            await asyncio.sleep(0.25)
        return round(time.monotonic() - started, 2)


async def fresh_database(backend: str, work: Path) -> str:
    if backend == "sqlite":
        return database.recreate_sqlite(work / "sqlite" / "accounts.db")
    return await database.recreate_pg()


def flush_broker() -> None:
    """Empty the bench's own Redis database (13), so no message of a past run is delivered."""
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.flushdb()
    finally:
        client.close()


async def login(base_url: str, emails: list[str]) -> list[str]:
    """An access token per email, through the service's own login endpoint."""
    semaphore = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def one(email: str) -> str:
            async with semaphore:
                response = await client.post(
                    "/api/v1/auth/token", data={"username": email, "password": database.PASSWORD}
                )
            response.raise_for_status()
            token: str = response.json()["access_token"]
            return token

        return list(await asyncio.gather(*(one(email) for email in emails)))


@asynccontextmanager
async def deploy(
    backend: str,
    workers: int,
    ws: Workspace,
    *,
    seed_users: int,
    token_users: int,
    worker_processes: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Deployment]:
    url = await fresh_database(backend, ws.root)
    celery = backend == "pg-celery"
    env = services.service_environment(
        url,
        data_dir=ws.root / "data",
        smtp_port=ws.smtp_port,
        broker_url=BROKER_URL if celery else "",
        **(extra_env or {}),
    )
    database.migrate(url, env)
    seeded = await database.seed(url, users=seed_users, admins=token_users)
    worker: Process | None = None
    api: Process | None = None
    digest = code.app_digest()
    try:
        if celery:
            flush_broker()
            worker = services.start_worker(env, concurrency=worker_processes or 2, logs=ws.logs)
        api = services.start_api(env, workers=workers, logs=ws.logs, name=f"api-{backend}")
        tokens = await login(f"http://127.0.0.1:{api.port}", seeded.admins)
        yield Deployment(backend, workers, url, api, worker, seeded, tokens, digest)
    finally:
        for process in (api, worker):
            if process is not None:
                process.stop()


def write_requests(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def users_me_requests(d: Deployment, path: Path) -> str:
    return write_requests(path, [f"/api/v1/users/me\t{token}" for token in d.tokens])


def users_by_id_requests(d: Deployment, path: Path, count: int = 4096) -> str:
    """Superusers reading other accounts by primary key: the service's real PK lookup
    (a user reading their own id is answered from the auth lookup, without a query)."""
    rng = random.Random(7)
    lines = [
        f"/api/v1/users/{rng.choice(d.seeded.ids)}\t{d.tokens[i % len(d.tokens)]}"
        for i in range(count)
    ]
    return write_requests(path, lines)


def login_emails(d: Deployment, path: Path) -> str:
    return write_requests(path, [f"seed-{i}@bench.example.com" for i in range(1000)])
