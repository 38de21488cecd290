"""The size part's data: tables filled in bulk by PostgreSQL itself, in databases of their own.

Rows are made by INSERT ... SELECT over generate_series, so a million users or jobs take
seconds, not the minutes a client-side executemany would.
"""

import sqlite3
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import asyncpg

from bench import database

# Of the jobs: one in four is a password reset (the name filter), one in ten dead (the status
# filter), one in twenty both; the rest are succeeded welcome emails. Even 1,000 jobs hold a
# full page of each filter.
RARE_NAME = "send_password_reset_email"
RARE_STATUS = "dead"

USERS = """
INSERT INTO users (id, email, name, hashed_password, is_active, is_verified, is_superuser,
                   token_version, created_at, updated_at)
SELECT gen_random_uuid(), 'size-' || g || '@bench.example.com', 'User ' || g, $1, true, true,
       false, 0, t, t
FROM generate_series(1, $2) g, LATERAL (SELECT $3::timestamptz - make_interval(secs => $2 - g)) s(t)
"""

JOBS = f"""
INSERT INTO jobs (id, name, payload, status, attempts, max_attempts, run_at, created_at,
                  updated_at)
SELECT gen_random_uuid(),
       CASE WHEN g % 4 = 0 THEN '{RARE_NAME}' ELSE 'send_welcome_email' END,
       json_build_object('user_id', gen_random_uuid()),
       CASE WHEN g % 10 = 0 THEN '{RARE_STATUS}' ELSE 'succeeded' END,
       CASE WHEN g % 10 = 0 THEN 8 ELSE 1 END, 8, t, t, t + interval '1 second'
FROM generate_series(1, $1) g, LATERAL (SELECT $2::timestamptz - make_interval(secs => $1 - g)) s(t)
"""

JOB_RUNS = """
INSERT INTO job_runs (id, job_id, attempt, worker, started_at, finished_at, outcome)
SELECT gen_random_uuid(), id, attempts, 'bench', created_at, updated_at, status FROM jobs
"""

# One simulated hour of traffic: `$1` registrations (a job and its run each), as many logins
# (a session and its first refresh token, rotated a quarter of an hour later into a second)
# and keyed registrations (an idempotency key each), spread over the hour before `$2`.
HOUR = [
    """
    INSERT INTO jobs (id, name, payload, status, attempts, max_attempts, run_at, created_at,
                      updated_at)
    SELECT gen_random_uuid(), 'send_welcome_email', json_build_object('user_id', $3::uuid),
           'succeeded', 1, 8, t, t, t + interval '1 second'
    FROM generate_series(1, $1) g,
         LATERAL (SELECT $2::timestamptz - make_interval(secs => 3600.0 * g / $1)) s(t)
    """,
    """
    INSERT INTO job_runs (id, job_id, attempt, worker, started_at, finished_at, outcome)
    SELECT gen_random_uuid(), id, 1, 'bench', created_at, updated_at, 'succeeded' FROM jobs
    WHERE created_at >= $2::timestamptz - interval '1 hour' AND created_at < $2::timestamptz
      AND $1::int > 0  -- the hour's count: every statement takes the same leading arguments
    """,
    """
    INSERT INTO login_sessions (id, user_id, user_agent, ip, created_at, last_used_at,
                                expires_at, revoked_at)
    SELECT gen_random_uuid(), $3::uuid, 'bench', '127.0.0.1', t, t + interval '15 minutes',
           t + interval '15 minutes' + make_interval(days => $4), NULL
    FROM generate_series(1, $1) g,
         LATERAL (SELECT $2::timestamptz - make_interval(secs => 3600.0 * g / $1)) s(t)
    """,
    """
    INSERT INTO refresh_tokens (id, user_id, session_id, token_hash, token_version, expires_at,
                                revoked_at, created_at)
    SELECT gen_random_uuid(), user_id, id, md5(random()::text) || md5(random()::text), 0,
           created_at + make_interval(days => $4), created_at + interval '15 minutes',
           created_at
    FROM login_sessions
    WHERE created_at >= $2::timestamptz - interval '1 hour' AND created_at < $2::timestamptz
      AND $1::int > 0  -- the hour's count: every statement takes the same leading arguments
      AND user_id = $3::uuid
    UNION ALL
    SELECT gen_random_uuid(), user_id, id, md5(random()::text) || md5(random()::text), 0,
           expires_at, NULL, last_used_at
    FROM login_sessions
    WHERE created_at >= $2::timestamptz - interval '1 hour' AND created_at < $2::timestamptz
      AND $1::int > 0  -- the hour's count: every statement takes the same leading arguments
    """,
    """
    INSERT INTO idempotency_keys (key, fingerprint, status_code, response_body, created_at)
    SELECT gen_random_uuid()::text, md5(random()::text), 201,
           json_build_object('email', 'someone@example.com', 'name', 'Someone'), t
    FROM generate_series(1, $1) g,
         LATERAL (SELECT $2::timestamptz - make_interval(secs => 3600.0 * g / $1)) s(t)
    """,
]

# What retention keeps bounded, with their indexes and TOAST (pg_total_relation_size).
PRUNED_TABLES = ("jobs", "job_runs", "login_sessions", "refresh_tokens", "idempotency_keys")


async def insert_hour(
    connection: asyncpg.Connection,
    *,
    per_hour: int,
    until: datetime,
    user_id: uuid.UUID,
    token_days: int,
) -> None:
    """One simulated hour's rows (HOUR), in one transaction."""
    args = (per_hour, until, user_id, token_days)
    async with connection.transaction():
        for statement in HOUR:
            used = max(n for n in range(1, len(args) + 1) if f"${n}" in statement)
            await connection.execute(statement, *args[:used])


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(database.plain_dsn(url))


class SqliteConnection:
    """The few asyncpg calls the size part makes, on one SQLite connection (aiosqlite): the
    plain SQL's `$n` placeholders become SQLite's `?n`."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, url: str) -> "SqliteConnection":
        return cls(await aiosqlite.connect(url.split("///", 1)[1]))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        cursor = await self.connection.execute(query.replace("$", "?"), args)
        return list(await cursor.fetchall())

    async def fetchrow(self, query: str, *args: Any) -> Any:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        row = await self.fetchrow(query, *args)
        return row[0] if row else None

    async def close(self) -> None:
        await self.connection.close()


# SQLite has no generate_series (without an extension): a recursive CTE counts instead. Ids are
# 32 hex digits and timestamps ISO text with microseconds, as SQLAlchemy stores them there.
_SQLITE_SERIES = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :count) "
_SQLITE_AT = "strftime('%Y-%m-%d %H:%M:%f', :until, '-' || (:count - n) || ' seconds') || '000'"
SQLITE_USERS = (
    _SQLITE_SERIES + "INSERT INTO users (id, email, name, hashed_password, is_active, is_verified,"
    " is_superuser, token_version, created_at, updated_at)"
    f" SELECT lower(hex(randomblob(16))), 'size-' || n || '@bench.example.com', 'User ' || n,"
    f" :hashed, 1, 1, 0, 0, {_SQLITE_AT}, {_SQLITE_AT} FROM g"
)
SQLITE_JOBS = (
    _SQLITE_SERIES + "INSERT INTO jobs (id, name, payload, status, attempts, max_attempts, run_at,"
    " created_at, updated_at)"
    f" SELECT lower(hex(randomblob(16))),"
    f" CASE WHEN n % 4 = 0 THEN '{RARE_NAME}' ELSE 'send_welcome_email' END,"
    " json_object('user_id', lower(hex(randomblob(16)))),"
    f" CASE WHEN n % 10 = 0 THEN '{RARE_STATUS}' ELSE 'succeeded' END,"
    f" CASE WHEN n % 10 = 0 THEN 8 ELSE 1 END, 8, {_SQLITE_AT}, {_SQLITE_AT}, {_SQLITE_AT} FROM g"
)
SQLITE_JOB_RUNS = (
    "INSERT INTO job_runs (id, job_id, attempt, worker, started_at, finished_at, outcome)"
    " SELECT lower(hex(randomblob(16))), id, attempts, 'bench', created_at, updated_at, status"
    " FROM jobs"
)


def fill_sqlite(
    url: str, *, users: int, jobs: int, hashed_password: str, until: datetime
) -> dict[str, float]:
    """fill() on SQLite (synchronous: run it in a thread)."""
    took: dict[str, float] = {}
    with sqlite3.connect(url.split("///", 1)[1]) as connection:
        at = until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        for name, statement, count in (
            ("users", SQLITE_USERS, users),
            ("jobs", SQLITE_JOBS, jobs),
            ("job_runs", SQLITE_JOB_RUNS, 0),
        ):
            started = time.monotonic()
            if count or name == "job_runs":
                params = {"count": count, "until": at, "hashed": hashed_password}
                connection.execute(statement, params if count else {})
            took[name] = round(time.monotonic() - started, 1)
        connection.commit()
        started = time.monotonic()
        connection.execute("ANALYZE")
        took["analyze"] = round(time.monotonic() - started, 1)
    return took


async def fill(
    url: str, *, users: int, jobs: int, hashed_password: str, until: datetime
) -> dict[str, float]:
    """`users` users and `jobs` finished jobs with their runs, one a second up to `until`;
    then VACUUM ANALYZE, as autovacuum would have done to a table that old. Seconds each took."""
    connection = await connect(url)
    took: dict[str, float] = {}
    try:
        for name, statement, args in (
            ("users", USERS, (hashed_password, users, until)),
            ("jobs", JOBS, (jobs, until)),
            ("job_runs", JOB_RUNS, ()),
        ):
            started = time.monotonic()
            await connection.execute(statement, *args)
            took[name] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        await connection.execute("VACUUM ANALYZE")
        took["vacuum_analyze"] = round(time.monotonic() - started, 1)
    finally:
        await connection.close()
    return took


async def sizes(connection: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """Rows and bytes (pg_total_relation_size) of each table retention prunes."""
    found: dict[str, dict[str, int]] = {}
    for table in PRUNED_TABLES:
        rows = await connection.fetchval(f"SELECT count(*) FROM {table}")
        size = await connection.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        found[table] = {"rows": int(rows), "bytes": int(size)}
    return found
