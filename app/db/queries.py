"""The two hottest reads, as plain SQL run on the database driver itself.

Everything else goes through the request's session. These two run before almost every request
(the user behind an access token or an API key), and SQLAlchemy's execution layer would be
about a third of such a request's CPU, so they are written here, next to each other, and run in
one autocommit round trip on the driver. The SQL is written once in PostgreSQL's `$n` style;
SQLite reads the same text as `?n`. The driver hands back its own types (SQLite: UUIDs as hex
text, booleans as integers, timestamps as text): each row becomes a `Principal` through the
explicit conversions at the bottom, so both backends give the same value (tested).
"""

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

_USER_COLUMNS = "u.id, u.email, u.name, u.is_active, u.is_verified, u.is_superuser, u.created_at"

# The active user behind an access token, if its session is still live and the user's token
# version is still the one the token was issued under: one round trip answers all of it.
USER_BY_SESSION = f"""
SELECT {_USER_COLUMNS}
FROM users AS u JOIN login_sessions AS s ON s.user_id = u.id
WHERE u.id = $1 AND s.id = $2 AND u.token_version = $3 AND u.is_active AND s.revoked_at IS NULL
"""

# The active user behind an API key that is not revoked; the caller checks its expiry.
USER_BY_API_KEY = f"""
SELECT {_USER_COLUMNS}, k.id, k.expires_at, k.last_used_at
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.is_active
"""

# When a key was last used, written at most once a minute per key (see services/api_keys).
TOUCH_API_KEY = "UPDATE api_keys SET last_used_at = $2 WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a value read for this request, never an ORM entity.

    Code that needs the stored user loads it in its session (`session.get(User, principal.id)`);
    a new row owned by the caller is `Model(user_id=principal.id)`.
    """

    id: uuid.UUID
    email: str
    name: str
    is_active: bool
    is_verified: bool
    is_superuser: bool
    created_at: datetime
    # How the request signed in: a login session (access token) or an API key.
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None


async def user_by_session(
    engine: AsyncEngine, *, user_id: uuid.UUID, session_id: uuid.UUID, token_version: int
) -> Principal | None:
    row = await _fetch_one(
        engine,
        USER_BY_SESSION,
        _uuid_arg(engine, user_id),
        _uuid_arg(engine, session_id),
        token_version,
    )
    if row is None:
        return None
    return _principal(row, session_id=session_id)


@dataclass(frozen=True, slots=True)
class KeyedPrincipal:
    principal: Principal
    expires_at: datetime | None
    last_used_at: datetime | None


async def user_by_api_key(engine: AsyncEngine, *, key_hash: str) -> KeyedPrincipal | None:
    row = await _fetch_one(engine, USER_BY_API_KEY, key_hash)
    if row is None:
        return None
    return KeyedPrincipal(
        _principal(row, api_key_id=_uuid(row[7])),
        _optional_datetime(row[8]),
        _optional_datetime(row[9]),
    )


async def touch_api_key(engine: AsyncEngine, *, key_id: uuid.UUID, now: datetime) -> None:
    await _execute(engine, TOUCH_API_KEY, _uuid_arg(engine, key_id), _datetime_arg(engine, now))


# --- running the SQL on the driver, and reading its values ------------------------------------

_POSITIONAL = re.compile(r"\$(\d+)")
T = TypeVar("T")


async def _fetch_one(engine: AsyncEngine, sql: str, *args: Any) -> Sequence[Any] | None:
    async def fetch(driver: Any) -> Sequence[Any] | None:
        if engine.dialect.name == "postgresql":
            row: Sequence[Any] | None = await driver.fetchrow(sql, *args)
            return row
        async with driver.execute(_sqlite(sql), args) as cursor:
            found: Sequence[Any] | None = await cursor.fetchone()
            return found

    return await _on_driver(engine, fetch)


async def _execute(engine: AsyncEngine, sql: str, *args: Any) -> None:
    async def execute(driver: Any) -> None:
        if engine.dialect.name == "postgresql":
            await driver.execute(sql, *args)
        else:
            await driver.execute(_sqlite(sql), args)  # the connection is in autocommit

    await _on_driver(engine, execute)


async def _on_driver(engine: AsyncEngine, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work` on a pooled connection's driver; autocommit, one round trip per statement."""
    pooled = await engine.raw_connection()
    driver: Any = pooled.driver_connection
    try:
        return await work(driver)
    except Exception as error:
        if engine.dialect.name != "postgresql" or not driver.is_closed():
            raise
        # Lost mid-query: asyncpg may report it as a protocol state error rather than a
        # connection error. Either way the database went away: unavailable, a 503.
        pooled.invalidate(error)  # not back into the pool
        raise ConnectionError("the database connection was lost") from error
    finally:
        await greenlet_spawn(pooled.close)


def _sqlite(sql: str) -> str:
    return _POSITIONAL.sub(r"?\1", sql)


def _principal(row: Sequence[Any], **how: uuid.UUID) -> Principal:
    return Principal(
        id=_uuid(row[0]),
        email=row[1],
        name=row[2],
        is_active=bool(row[3]),
        is_verified=bool(row[4]),
        is_superuser=bool(row[5]),
        created_at=_datetime(row[6]),
        **how,
    )


def _uuid(value: Any) -> uuid.UUID:
    # asyncpg returns a UUID subclass of its own, SQLite hex text: both become uuid.UUID.
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


def _datetime(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_datetime(value: Any) -> datetime | None:
    return None if value is None else _datetime(value)


def _uuid_arg(engine: AsyncEngine, value: uuid.UUID) -> uuid.UUID | str:
    # SQLAlchemy stores UUIDs on SQLite as 32 hex digits.
    return value if engine.dialect.name == "postgresql" else value.hex


def _datetime_arg(engine: AsyncEngine, value: datetime) -> datetime | str:
    # SQLAlchemy stores timestamps on SQLite as naive UTC text.
    if engine.dialect.name == "postgresql":
        return value
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
