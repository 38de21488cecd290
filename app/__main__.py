"""Command line: `python -m app serve|migrate|createsuperuser|worker|relay|jobs|prune`."""

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from app.core import tracing
from app.core.config import ConfigError, Settings, load_settings
from app.core.errors import AppError
from app.core.logging import configure_logging

if TYPE_CHECKING:
    from app.db.session import Database


@contextlib.asynccontextmanager
async def ready_database(settings: Settings) -> AsyncIterator["Database"]:
    """The database, once it is known to answer and to be migrated; ConfigError otherwise."""
    from app.db.session import Database
    from app.services import startup

    db = Database.from_settings(settings)
    try:
        await startup.check_ready_to_serve(db)
        yield db
    finally:
        await db.dispose()


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    async def check() -> None:
        async with ready_database(settings):
            pass

    asyncio.run(check())
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Worker processes write their metric samples here; /metrics adds them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="accounts-metrics-")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        log_config=None,  # our logging setup renders uvicorn's lines too
        access_log=False,  # the app writes its own access line, with the request id
        # X-Forwarded-For names the client only when a proxy in FORWARDED_ALLOW_IPS sent it.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        # uvicorn's own, with deadlines for idle connections and request heads (app/server.py).
        http="app.server:BoundedHttpProtocol",
        timeout_keep_alive=5,
    )


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    from alembic import command
    from sqlalchemy.exc import SQLAlchemyError

    from app.services.startup import alembic_config

    try:
        command.upgrade(alembic_config(settings), args.revision)
    except (SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise ConfigError(f"cannot migrate the database: {reason!r}") from None


def createsuperuser(settings: Settings, args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from app.schemas.users import UserCreate
    from app.services import users

    password = os.environ.get("SUPERUSER_PASSWORD") or getpass.getpass("Password: ")
    try:
        data = UserCreate(email=args.email, name=args.name, password=password)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from None

    async def create() -> None:
        async with ready_database(settings) as db, db.transaction() as session:
            await users.create_superuser(session, data)

    asyncio.run(create())
    print(f"superuser {args.email} created")


def worker(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.broker_url:
        raise ConfigError("BROKER_URL is empty: jobs run inside the API process, no worker needed")
    from app.core import metrics_server

    # First: it must set PROMETHEUS_MULTIPROC_DIR before the job code imports the metrics.
    with metrics_server.serving(settings):
        from app.worker import create_celery

        argv = ["worker", "--loglevel", settings.log_level, "--concurrency", str(args.concurrency)]
        create_celery(settings).worker_main([*argv, *args.celery_args])


def relay(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.broker_url:
        raise ConfigError("BROKER_URL is empty: there is no broker to relay jobs to")
    from app.db.session import Database
    from app.services.relay import Relay
    from app.worker import create_celery, publisher

    async def run() -> None:
        db = Database.from_settings(settings)
        tracing.instrument_engine(db.engine)
        runner = Relay(db, settings, publisher(create_celery(settings)))
        runner.start()
        try:
            await asyncio.Event().wait()  # until interrupted
        finally:
            await runner.stop()
            await db.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def jobs_command(settings: Settings, args: argparse.Namespace) -> None:
    from app.core import security
    from app.db.models import JobStatus
    from app.services import jobs
    from app.services.pagination import PageParams

    async def run() -> None:
        async with ready_database(settings) as db:
            async with db.transaction() as session:
                if args.action == "retry":
                    for job_id in args.job_ids:
                        job = await jobs.retry(session, job_id)
                        print(f"{job.id}  {job.name}  queued again")
                    return
                status = JobStatus(args.status) if args.status else None
                key = security.purpose_key(settings.signing_key, security.PAGE_CURSORS)
                page = PageParams(limit=args.limit, cursor=None, key=key)
                items, more = await jobs.list_jobs(session, status=status, name=None, page=page)
            for job in items:
                error = f"  {job.last_error}" if job.last_error else ""
                print(
                    f"{job.id}  {job.status:<9}  {job.attempts}/{job.max_attempts}  "
                    f"{job.created_at:%Y-%m-%d %H:%M:%S}  {job.name}{error}"
                )
            print(f"{len(items)} job(s), newest first" + (" (there are more)" if more else ""))

    asyncio.run(run())


def prune(settings: Settings, args: argparse.Namespace) -> None:
    from app.services import retention

    async def run() -> retention.Pruned:
        async with ready_database(settings) as db:
            return await retention.prune(db, settings)

    pruned = asyncio.run(run())
    for table, count in pruned.deleted.items():
        print(f"{table}: {count} deleted")


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

    p = commands.add_parser("worker", help="run a Celery worker (needs BROKER_URL)")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    p.epilog = "Any other option (-n NAME, -Q QUEUE ...) is passed on to `celery worker`."
    p.set_defaults(run=worker)

    p = commands.add_parser("relay", help="publish committed jobs to the broker (needs BROKER_URL)")
    p.set_defaults(run=relay)

    p = commands.add_parser("jobs", help="list background jobs, or retry failed and dead ones")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "dead"])
    listing.add_argument("--limit", type=int, default=50)
    retrying = actions.add_parser("retry")
    retrying.add_argument("job_ids", nargs="+", type=uuid.UUID, metavar="JOB_ID")
    p.set_defaults(run=jobs_command)

    p = commands.add_parser("prune", help="delete the history retention allows, now")
    p.set_defaults(run=prune)

    args, extra = parser.parse_known_args(argv)
    if extra and args.run is not worker:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.celery_args = extra
    try:
        settings = load_settings()
        configure_logging(level=settings.log_level, json=settings.log_json)
        tracing.configure()  # from the OTEL_* variables; off when they name no exporter
        # Alembic narrates at INFO; only a migration's own steps are worth showing.
        alembic_level = logging.INFO if args.run is migrate else logging.WARNING
        logging.getLogger("alembic").setLevel(alembic_level)
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        args.run(settings, args)
    except (ConfigError, AppError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
