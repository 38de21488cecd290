"""The bench databases: created fresh, migrated by the service's own command, then seeded."""

import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.security import password_hash
from app.db.models import Job, JobStatus, User
from app.services.jobs import JOBS_DUE_CHANNEL

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "accounts_bench"
PASSWORD = "benchpass123"  # every seeded user's; letters and digits only, for the wrk form body
ROOT = Path(__file__).resolve().parents[1]
USERS = cast(Table, User.__table__)
JOBS = cast(Table, Job.__table__)


def pg_url(database: str = PG_DATABASE) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def recreate_pg(database: str = PG_DATABASE) -> str:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
    return pg_url(database)


def recreate_sqlite(path: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def migrate(url: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


@dataclass(frozen=True)
class Seeded:
    ids: list[uuid.UUID]  # every seeded user
    admins: list[str]  # emails of the superusers that benchmarks log in as


async def seed(url: str, *, users: int, admins: int) -> Seeded:
    """`users` accounts sharing one Argon2 hash of PASSWORD (made with the service's own
    parameters, so login does not rehash); the first `admins` are superusers."""
    hashed = password_hash.hash(PASSWORD)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "id": uuid.uuid4(),
            "email": f"seed-{i}@bench.example.com",
            "name": f"Seeded user {i}",
            "hashed_password": hashed,
            "is_active": True,
            "is_verified": True,
            "is_superuser": i < admins,
            "token_version": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(users)
    ]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(USERS), rows)
            if engine.dialect.name == "postgresql":
                await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return Seeded([row["id"] for row in rows], [row["email"] for row in rows[:admins]])


async def insert_jobs(url: str, *, name: str, count: int) -> datetime:
    """`count` due jobs in one transaction that announces them, as any producer outside the
    service does (app.services.jobs.announce); returns when the commit finished."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "name": name,
            "payload": {},
            "status": JobStatus.QUEUED,
            "attempts": 0,
            "max_attempts": 1,
            "run_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(count)
    ]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(JOBS), rows)
            await connection.execute(text(f"NOTIFY {JOBS_DUE_CHANNEL}"))
    finally:
        await engine.dispose()
    return datetime.now(UTC)


async def job_counts(url: str, *, name: str | None = None) -> dict[str, int]:
    """Jobs by status (all jobs, or those named `name`)."""
    query = select(JOBS.c.status, func.count()).group_by(JOBS.c.status)
    if name is not None:
        query = query.where(JOBS.c.name == name)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
    finally:
        await engine.dispose()
    return {str(status): int(count) for status, count in rows}


class JobWatch:
    """Watches jobs drain, over one connection, with checks that stop at the first row.

    The watching shares the machine with what it measures: a new connection (a backend forked
    by PostgreSQL) and a count of the whole table ten times a second cost it several percent of
    a core, which raw Celery's watcher (two Redis lengths) did not pay."""

    _LEFT = "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'running', 'failed'))"
    _DONE = "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('succeeded', 'dead'))"

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, url: str) -> "JobWatch":
        return cls(await asyncpg.connect(plain_dsn(url)))

    async def any_done(self) -> bool:
        return bool(await self.connection.fetchval(self._DONE))

    async def any_left(self) -> bool:
        return bool(await self.connection.fetchval(self._LEFT))

    async def close(self) -> None:
        await self.connection.close()


async def welcome_jobs(url: str) -> list[tuple[str, str, datetime]]:
    """(job id, user id, created_at) of every welcome email job."""
    table = JOBS
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(table.c.id, table.c.payload, table.c.created_at).where(
                        table.c.name == "send_welcome_email"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return [(str(job_id), str(payload["user_id"]), created) for job_id, payload, created in rows]


async def delete_jobs(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM job_runs"))
            await connection.execute(text("DELETE FROM jobs"))
    finally:
        await engine.dispose()


async def backend_pids(database: str = PG_DATABASE) -> list[int]:
    """PostgreSQL processes serving `database`, plus its background writers and WAL writer,
    for their CPU time."""
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL", database
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]
