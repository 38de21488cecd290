"""Engine and session factories.

Reads run in autocommit (one round trip, no BEGIN/COMMIT); the request session that may write
runs in a real transaction. On SQLite a writing transaction starts with BEGIN IMMEDIATE, so
concurrent writers queue on the busy timeout instead of failing when they upgrade a read lock.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement, Executable, Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from app.core.config import Settings
from app.core.errors import AppError

# Execution option that marks a SQLite connection whose transaction will write.
SQLITE_WRITER = "sqlite_writer"
# Session.info key: the jobs this transaction enqueued (a list, empty when it only made jobs due
# again); whoever runs jobs in this process hears of them as the transaction commits.
JOBS_ENQUEUED = "jobs_enqueued"
# A pooled connection idle for longer than this is pinged before use. One in steady use is not:
# a ping per checkout would be a round trip on every request.
PING_AFTER_IDLE_SECONDS = 1.0


def create_engine(settings: Settings, *, wait_for_flush: bool = True) -> AsyncEngine:
    """The engine for DATABASE_URL.

    `wait_for_flush=False`: on PostgreSQL a commit answers before its WAL reaches the disk
    (synchronous_commit off). For work that is repeated when lost: a crash of the database
    server can undo the last fraction of a second of commits, never leaving them half done.
    """
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
    if not wait_for_flush:
        server_settings["synchronous_commit"] = "off"
    engine = create_async_engine(
        url,
        **pool,
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
        # A database that does not accept the connection in time is unavailable, not slow.
        connect_args={"timeout": settings.db_pool_timeout, "server_settings": server_settings},
    )
    _ping_when_idle(engine, after_seconds=PING_AFTER_IDLE_SECONDS)
    return engine


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


class JobsListener(Protocol):
    """Whoever runs jobs in this process: the embedded dispatcher, or the relay to Celery."""

    def committing(self, session: AsyncSession, enqueued: list[Any]) -> Callable[[bool], None]:
        """Called just before a transaction that enqueued commits. It may take jobs of
        `enqueued` for itself, changing them before they are written; what it returns is told
        whether the commit went through."""
        ...


class Database:
    """The engine with its two session factories: transactional and autocommit reads."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        writer = engine.execution_options(**transaction_options(engine))
        self.sessionmaker = async_sessionmaker(writer, expire_on_commit=False)
        self.read_sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self.jobs_listener: JobsListener | None = None
        self._driver_sql: dict[Executable, DriverSQL] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        async with self.sessionmaker() as session:
            try:
                yield session
            except AppError as exc:
                await (self._commit(session) if exc.keeps_changes else session.rollback())
                raise
            except BaseException:
                await session.rollback()
                raise
            await self._commit(session)

    async def _commit(self, session: AsyncSession) -> None:
        enqueued = session.info.pop(JOBS_ENQUEUED, None)
        if enqueued is None or self.jobs_listener is None:
            await session.commit()
            return
        committed = self.jobs_listener.committing(session, enqueued)
        try:
            await session.commit()
        except BaseException:
            committed(False)
            raise
        committed(True)

    @asynccontextmanager
    async def statement(self) -> AsyncIterator["AsyncConnection | DriverConnection"]:
        """A connection, without an ORM session, for writes that are each one statement.

        PostgreSQL runs a single statement atomically by itself, so they run in autocommit on
        the driver: one round trip each instead of BEGIN, the statement and COMMIT, and none
        of SQLAlchemy's execution layer. Elsewhere the block is one transaction.
        """
        if self.is_postgresql:
            async with self._driver() as driver:
                yield driver
            return
        async with self.engine.connect() as connection:
            writer = await connection.execution_options(**transaction_options(self.engine))
            async with writer.begin():
                yield writer

    async def fetch_one(self, statement: Select[Any], **params: Any) -> Mapping[str, Any] | None:
        """The first row of a read, in one autocommit round trip.

        For the hottest reads (the user behind every access token). On PostgreSQL it runs on
        the driver (see DriverConnection): about a third of the CPU of a small request.
        """
        if not self.is_postgresql:
            async with self.engine.connect() as conn:
                found: Mapping[str, Any] | None
                found = (await conn.execute(statement, params)).mappings().first()
                return found
        async with self._driver() as connection:
            rows = await connection.execute(statement, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def listen(
        self, channel: str, notified: Callable[[], None]
    ) -> AsyncIterator["asyncio.Future[None]"]:
        """PostgreSQL: call `notified` on every NOTIFY on `channel`, heard on a connection of
        its own (taken out of the pool, which opens another in its place). Yields a future
        that is done when that connection is lost."""
        pooled = await self.engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        pooled.detach()  # it never goes back to the pool: closing it closes it
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_lost(_: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        driver.add_termination_listener(on_lost)
        try:
            await driver.add_listener(channel, lambda *_: notified())
            yield lost
        finally:
            await greenlet_spawn(pooled.close)

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator["DriverConnection"]:
        pooled = await self.engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        try:
            yield DriverConnection(driver, self.engine.dialect, self._driver_sql)
        except Exception as error:
            if not driver.is_closed():
                raise
            # Lost mid-query: asyncpg may report it as a protocol state error rather than a
            # connection error. Either way the database went away: unavailable, a 503.
            pooled.invalidate(error)  # not back into the pool
            raise ConnectionError("the database connection was lost") from error
        finally:
            await greenlet_spawn(pooled.close)

    async def dispose(self) -> None:
        await self.engine.dispose()


@dataclass(frozen=True)
class DriverSQL:
    """A Core statement compiled once for the driver: its SQL, and where each positional
    argument comes from (a parameter of the caller's, through its type's bind processor, or
    a value the statement carries itself, processed once)."""

    sql: str
    arguments: tuple[tuple[str | None, Callable[[Any], Any] | None, Any], ...]

    @classmethod
    def compile(cls, statement: Executable, dialect: Dialect) -> "DriverSQL":
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        asked = {name for name, bind in compiled.binds.items() if bind.required}
        if any(compiled.binds[name].expanding for name in asked):
            raise TypeError("a statement run on the driver takes no IN list from the caller")
        # Expands the IN lists of constants into positional parameters of their own.
        expanded = compiled.construct_expanded_state(dict.fromkeys(asked))
        arguments: list[tuple[str | None, Callable[[Any], Any] | None, Any]] = []
        for name in expanded.positiontup or ():
            # The expanded state knows the processors of the IN lists' values only.
            process = expanded.processors.get(name)
            if name in compiled.binds:
                process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if name in asked:
                arguments.append((name, process, None))
            else:
                value = expanded.parameters[name]
                arguments.append((None, None, process(value) if process else value))
        return cls(expanded.statement, tuple(arguments))

    def bind(self, params: Mapping[str, Any]) -> list[Any]:
        return [
            constant if name is None else process(params[name]) if process else params[name]
            for name, process, constant in self.arguments
        ]


class DriverConnection:
    """A pooled asyncpg connection running Core statements without SQLAlchemy's execution layer.

    For the statements on the hottest paths: the user behind an access token, the claims and
    outcomes of jobs. Each statement is compiled once and is its own transaction (autocommit).
    Rows come back as asyncpg records, decoded by the driver: JSON by the codec SQLAlchemy
    installs on each connection; no result processors run.
    """

    def __init__(self, driver: Any, dialect: Dialect, cache: dict[Executable, DriverSQL]) -> None:
        self.driver = driver
        self.dialect = dialect
        self._cache = cache

    async def execute(
        self, statement: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        """The rows of one statement; a list of parameter sets runs it for each (no rows)."""
        if (sql := self._cache.get(statement)) is None:
            sql = self._cache[statement] = DriverSQL.compile(statement, self.dialect)
        if isinstance(params, Mapping):
            rows: list[Any] = await self.driver.fetch(sql.sql, *sql.bind(params))
            return rows
        await self.driver.executemany(sql.sql, [sql.bind(p) for p in params])
        return []
