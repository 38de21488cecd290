from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from app.core.config import Settings
from app.db.base import Base
from app.db.session import Database
from app.services import startup


async def test_models_and_migrations_agree(settings: Settings) -> None:
    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    db = Database.from_settings(settings)
    try:
        async with db.engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await db.dispose()


async def test_database_is_at_the_head_revision(settings: Settings) -> None:
    db = Database.from_settings(settings)
    try:
        assert await startup.current_revision(db) == startup.head_revision()
    finally:
        await db.dispose()
