"""Engine and session factories.

Every session of `Database.transaction()` (each request, reads included, each job, each admin
action) runs in a real transaction: READ COMMITTED on PostgreSQL; on SQLite it starts with
BEGIN IMMEDIATE, so concurrent writers queue on the busy timeout instead of failing when they
upgrade a read lock. The engine itself is in autocommit, for what runs a statement at a time
outside any session: the bearer-token reads (db/queries.py), `Database.statement()` on
PostgreSQL (job bookkeeping), and the admin's list and detail pages.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from app.core.config import Settings

# Execution option that marks a SQLite connection whose transaction will write.
SQLITE_WRITER = "sqlite_writer"
# A pooled connection idle for longer than this is pinged before use. One in steady use is not:
# a ping per checkout would be a round trip on every request.
PING_AFTER_IDLE_SECONDS = 1.0
# How the service's connections show in pg_stat_activity: the one startup parameter that a
# transaction-mode pooler passes on.
APPLICATION_NAME = "accounts-service"
# The listener tries again after a failure; meanwhile the poll finds due jobs.
LISTEN_CONNECT_TIMEOUT_S = 5.0


def create_engine(settings: Settings, *, wait_for_flush: bool = True) -> AsyncEngine:
    """The engine for DATABASE_URL.

    `wait_for_flush=False`: on PostgreSQL a commit answers before its WAL reaches the disk
    (synchronous_commit off). For work that is repeated when lost: a crash of the database
    server can undo the last fraction of a second of commits, never leaving them half done.
    """
    url = make_url(settings.database_url)
    pool: dict[str, Any] = {
        # Errors and logs never show a parameter: a password hash, a token, an address.
        "hide_parameters": True,
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
    session_settings: dict[str, str] = {}
    if settings.db_statement_timeout_ms:
        session_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    if not wait_for_flush:
        session_settings["synchronous_commit"] = "off"
    # A database that does not accept the connection in time is unavailable, not slow.
    connect_args: dict[str, Any] = {
        "timeout": settings.db_pool_timeout,
        "server_settings": {"application_name": APPLICATION_NAME},
    }
    if settings.db_transaction_pooler:
        connect_args |= POOLER_CONNECT_ARGS
    else:
        connect_args["server_settings"] |= session_settings
    engine = create_async_engine(
        url, **pool, pool_recycle=1800, isolation_level="AUTOCOMMIT", connect_args=connect_args
    )
    if settings.db_transaction_pooler and session_settings:
        _set_per_transaction(engine, session_settings)
    _ping_when_idle(engine, after_seconds=PING_AFTER_IDLE_SECONDS)
    return engine


def _unnamed_statement() -> str:
    return ""


# Behind a transaction-mode pooler each transaction (each autocommit statement) may run on a
# different server connection, shared with other clients. A named prepared statement stays
# behind on its server connection: asyncpg numbers them per client, so another client's
# `__asyncpg_stmt_1__` "already exists" there; unique names (the recipe of SQLAlchemy's docs)
# pile up instead, and fail too, since asyncpg closes the previous statement between the new
# one's Parse and Bind, and that Sync lets the pooler move the client to another server
# connection, where the new one "does not exist" (tests/db/test_pgbouncer.py shows both). So
# nothing is cached and every statement is the unnamed one, parsed and run without a Sync in
# between (one server connection throughout) and replaced by the next. The pooler accepts
# only `application_name` of the startup parameters; the rest is set per transaction.
POOLER_CONNECT_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,  # asyncpg's own cache (the driver-level reads in db/queries)
    "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg dialect
    "prepared_statement_name_func": _unnamed_statement,
}


def _set_per_transaction(engine: AsyncEngine, values: dict[str, str]) -> None:
    """`SET LOCAL` what a direct connection sets once per session, at each transaction's start.

    Statements outside a transaction (the autocommit reads and one-statement writes) take the
    role's own settings: `ALTER ROLE ... SET statement_timeout` (see the README).
    """
    statements = [f"SET LOCAL {name} = {value}" for name, value in values.items()]

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get("isolation_level", "AUTOCOMMIT") != "AUTOCOMMIT":
            for statement in statements:
                connection.exec_driver_sql(statement)


def _ping_when_idle(engine: AsyncEngine, *, after_seconds: float) -> None:
    """Pessimistic disconnect handling for connections that sat in the pool.

    After a database restart every idle pooled connection is dead; each is pinged when taken
    out and replaced if the ping fails, so no request meets a stale one.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < after_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool replaces the connection and tries again.
            raise exc.DisconnectionError() from error


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
    """The engine, the sessions every route, service and job uses, and Core connections for
    the job bookkeeping.

    LISTEN needs a connection of its own for as long as it listens: by default one taken from
    the engine's pool; `listen_url` connects to that URL instead (a direct one when the pool
    goes through a transaction-mode pooler, where a LISTEN would be lost with its server
    connection); `can_listen=False` listens nowhere, and the poll finds the jobs.
    """

    def __init__(
        self, engine: AsyncEngine, *, listen_url: str | None = None, can_listen: bool = True
    ) -> None:
        self.engine = engine
        writer = engine.execution_options(**transaction_options(engine))
        self.sessionmaker = async_sessionmaker(writer, expire_on_commit=False)
        self.listen_url = listen_url
        self.can_listen = can_listen and self.is_postgresql

    @classmethod
    def from_settings(cls, settings: Settings, *, wait_for_flush: bool = True) -> "Database":
        """The database of DATABASE_URL, listening where DATABASE_LISTEN_URL and
        DB_TRANSACTION_POOLER say."""
        engine = create_engine(settings, wait_for_flush=wait_for_flush)
        return cls(
            engine,
            listen_url=settings.database_listen_url or None,
            can_listen=bool(settings.database_listen_url) or not settings.db_transaction_pooler,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        async with self.sessionmaker() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.commit()

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection, without an ORM session, for writes that are each one statement.

        PostgreSQL runs a single statement atomically by itself, so they run in autocommit:
        one round trip each instead of BEGIN, the statement and COMMIT. Elsewhere the block is
        one transaction.
        """
        async with self.engine.connect() as connection:
            if self.is_postgresql:
                yield connection
                return
            writer = await connection.execution_options(**transaction_options(self.engine))
            async with writer.begin():
                yield writer

    @asynccontextmanager
    async def listen(
        self, channel: str, notified: Callable[[], None]
    ) -> AsyncIterator["asyncio.Future[None]"]:
        """PostgreSQL: call `notified` on every NOTIFY on `channel`, heard on a connection of
        its own (see the class). Yields a future that is done when that connection is lost."""
        if not self.can_listen:
            raise RuntimeError("this database listens nowhere (DB_TRANSACTION_POOLER)")
        async with self._listening_connection() as driver:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_lost(_: Any) -> None:
                if not lost.done():
                    lost.set_result(None)

            driver.add_termination_listener(on_lost)
            await driver.add_listener(channel, lambda *_: notified())
            yield lost

    @asynccontextmanager
    async def _listening_connection(self) -> AsyncIterator[Any]:
        if self.listen_url is not None:
            dsn = make_url(self.listen_url).set(drivername="postgresql")
            direct = await asyncpg.connect(
                dsn.render_as_string(hide_password=False),
                timeout=LISTEN_CONNECT_TIMEOUT_S,
                server_settings={"application_name": APPLICATION_NAME},
            )
            try:
                yield direct
            finally:
                await direct.close(timeout=5)
            return
        pooled = await self.engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        pooled.detach()  # it never goes back to the pool: closing it closes it
        try:
            yield driver
        finally:
            await greenlet_spawn(pooled.close)

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    async def dispose(self) -> None:
        await self.engine.dispose()
