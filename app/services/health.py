"""Readiness: can this process serve requests right now? Each part answers "ok" or why not."""

import asyncio

from kombu import Connection

from app.core.config import Settings
from app.core.single_flight import SingleFlight
from app.db.session import Database
from app.services import startup

CHECK_TIMEOUT_S = 2.0
# Probes are unauthenticated: concurrent ones share one check, and its result answers for this
# long, so no rate of probing makes more than one check a second.
SHARED_FOR_S = 1.0


def shared_readiness(
    db: Database, settings: Settings, *, head: str | None
) -> SingleFlight[dict[str, str]]:
    return SingleFlight(lambda: check_readiness(db, settings, head=head), max_age=SHARED_FOR_S)


async def check_readiness(db: Database, settings: Settings, *, head: str | None) -> dict[str, str]:
    checks = {"database": "ok", "migrations": "ok"}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            revision = await startup.current_revision(db)
    except Exception as exc:  # any failure means not ready; the reason goes to the operator
        checks["database"] = f"failed: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    else:
        if revision != head:
            checks["migrations"] = f"failed: at {revision or 'none'}, expected {head}"
    if settings.broker_url:
        checks["broker"] = await _check_broker(settings.broker_url)
    return checks


async def _check_broker(url: str) -> str:
    def connect() -> None:
        with Connection(url, connect_timeout=CHECK_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1)

    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S * 2):
            await asyncio.to_thread(connect)  # kombu is synchronous
    except Exception as exc:
        return f"failed: {type(exc).__name__}"
    return "ok"
