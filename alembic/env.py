"""Alembic environment: runs migrations over the application's async engine."""

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from app.core.config import load_settings
from app.db import models  # noqa: F401  (registers the tables on Base.metadata)
from app.db.base import Base
from app.db.session import create_engine, transaction_options

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes the app's column types as the SQLAlchemy types they store (UTCDateTime
    as `sa.DateTime(timezone=True)`): the DDL is the same, and a migration imports no app code,
    which may change or move after the migration was written. Anything else: alembic's way."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        stored = obj.impl_instance
        if type(stored).__module__.startswith("sqlalchemy.sql."):  # a generic type, sa.<Name>
            return f"{autogen_context.opts['sqlalchemy_module_prefix']}{stored!r}"
    return False


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters tables by copying them; batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    settings = config.attributes.get("settings") or load_settings()
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch operations copy tables; with foreign keys on, dropping the old copy
                # would cascade. The pragma only takes effect outside a transaction.
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await connection.commit()
            await connection.execution_options(**transaction_options(engine))
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
asyncio.run(run_async_migrations())
