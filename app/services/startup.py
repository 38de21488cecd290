"""What the service checks and prepares before it takes traffic."""

import logging
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import ConfigError, Settings
from app.db.session import Database
from app.services import users

logger = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(settings: Settings | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    # alembic.ini puts the project root on sys.path so that the `alembic` command can import
    # app. Here app is imported already, and each reading of the scripts would prepend the
    # root once more: every create_app would grow sys.path, and every failed import with it.
    config.set_main_option("prepend_sys_path", "")
    config.attributes["settings"] = settings
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(db: Database) -> str | None:
    """The migration the database is at; None when it was never migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.engine.connect() as connection:
        return await connection.run_sync(read)


async def check_ready_to_serve(db: Database) -> None:
    """Fail with one clear line when the database is unreachable or not migrated."""
    url = db.engine.url.render_as_string(hide_password=True)
    try:
        revision = await current_revision(db)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise ConfigError(f"cannot reach the database at {url}: {reason!r}") from None
    if revision != head_revision():
        raise ConfigError(
            f"the database at {url} is at migration {revision or 'none'}, not {head_revision()}: "
            "run `python -m app migrate`"
        )


async def ensure_first_superuser(db: Database, settings: Settings) -> None:
    if not (settings.first_superuser_email and settings.first_superuser_password):
        return
    async with db.transaction() as session:
        created = await users.ensure_superuser(
            session,
            email=settings.first_superuser_email,
            password=settings.first_superuser_password,
        )
    if created:
        logger.info("created the first superuser %s", settings.first_superuser_email)
