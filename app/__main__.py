"""Command line: `python -m app serve|migrate|createsuperuser`."""

import argparse
import asyncio
import getpass
import logging
import os
import sys

from app.core.config import ConfigError, Settings, load_settings
from app.core.errors import AppError


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from app.db.session import Database, create_engine
    from app.services import startup

    async def check() -> None:
        db = Database(create_engine(settings))
        try:
            await startup.check_ready_to_serve(db)
        finally:
            await db.dispose()

    asyncio.run(check())
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    from alembic import command

    from app.services.startup import alembic_config

    command.upgrade(alembic_config(settings), args.revision)


def createsuperuser(settings: Settings, args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from app.db.session import Database, create_engine
    from app.schemas.users import UserCreate
    from app.services import users

    password = os.environ.get("SUPERUSER_PASSWORD") or getpass.getpass("Password: ")
    try:
        data = UserCreate(email=args.email, name=args.name, password=password)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from None

    async def create() -> None:
        db = Database(create_engine(settings))
        try:
            async with db.transaction() as session:
                await users.create_superuser(session, data)
        finally:
            await db.dispose()

    asyncio.run(create())
    print(f"superuser {args.email} created")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="serve the API (checks the database first)")
    p.add_argument("--host", help="default: HOST")
    p.add_argument("--port", type=int, help="default: PORT")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.set_defaults(run=serve)

    p = commands.add_parser("migrate", help="apply database migrations")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(run=migrate)

    p = commands.add_parser(
        "createsuperuser", help="create a superuser (password from SUPERUSER_PASSWORD or a prompt)"
    )
    p.add_argument("--email", required=True)
    p.add_argument("--name", default="Administrator")
    p.set_defaults(run=createsuperuser)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        args.run(load_settings(), args)
    except (ConfigError, AppError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
