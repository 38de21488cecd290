"""Alembic environment: runs migrations over the application's async engine."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from app.core.config import load_settings
from app.db import models  # noqa: F401  (registers the tables on Base.metadata)
from app.db.base import Base
from app.db.session import create_engine, transaction_options

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters tables by copying them; batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
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
