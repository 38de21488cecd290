"""Engine and session factories.

Reads run in autocommit (one round trip, no BEGIN/COMMIT); the request session that may write
runs in a real transaction. On SQLite a writing transaction starts with BEGIN IMMEDIATE, so
concurrent writers queue on the busy timeout instead of failing when they upgrade a read lock.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from app.core.config import Settings
from app.core.errors import AppError

# Execution option that marks a SQLite connection whose transaction will write.
SQLITE_WRITER = "sqlite_writer"
# Session.info flag: this transaction enqueued jobs; whoever runs them is woken on commit.
JOBS_ENQUEUED = "jobs_enqueued"


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    pool: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
    }
    if settings.is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, **pool, connect_args={"timeout": settings.db_statement_timeout_ms / 1000 or 5}
        )
        _configure_sqlite(engine, busy_timeout_ms=settings.db_statement_timeout_ms or 5000)
        return engine
    server_settings = {"application_name": "accounts-service"}
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    return create_async_engine(
        url,
        **pool,
        pool_pre_ping=True,
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
        # A database that does not accept the connection in time is unavailable, not slow.
        connect_args={"timeout": settings.db_pool_timeout, "server_settings": server_settings},
    )


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN out of the driver's hands; the "begin" listener below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            f"busy_timeout={busy_timeout_ms}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(SQLITE_WRITER):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def transaction_options(engine: AsyncEngine) -> dict[str, Any]:
    """Execution options for connections that write: a real transaction on every backend."""
    if engine.dialect.name == "sqlite":
        return {SQLITE_WRITER: True}
    return {"isolation_level": "READ COMMITTED"}


class Database:
    """The engine with its two session factories: transactional and autocommit reads."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        writer = engine.execution_options(**transaction_options(engine))
        self.sessionmaker = async_sessionmaker(writer, expire_on_commit=False)
        self.read_sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self.on_jobs_committed: list[Callable[[], None]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        async with self.sessionmaker() as session:
            try:
                yield session
            except AppError as exc:
                await (session.commit() if exc.keeps_changes else session.rollback())
                raise
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
            if session.info.pop(JOBS_ENQUEUED, False):
                for wake in self.on_jobs_committed:
                    wake()

    async def dispose(self) -> None:
        await self.engine.dispose()
