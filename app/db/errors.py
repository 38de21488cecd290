"""Which database errors mean "unavailable, retry shortly" rather than a bug, and how soon."""

import asyncio
import contextlib
import logging
import random

import asyncpg
from sqlalchemy import exc as sa_exc

# Failures the database inflicts to break a cycle of lock waits, or a conflict between
# transactions: the same work, tried again, goes through.
_CONFLICT_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure

# SQLSTATEs of a server that is going away, overloaded, or cancelled our statement on a timeout;
# and conflicts that outlasted any retry in place (sessions.lock_user): a request answers 503
# with Retry-After, never 500, and background work tries again after its backoff.
_UNAVAILABLE_SQLSTATES = _CONFLICT_SQLSTATES | {
    "53300",  # too_many_connections
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
}


# What the asyncpg driver raises itself, on the reads that bypass SQLAlchemy (app/db/queries.py).
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError | ConnectionError | TimeoutError):
        return True  # pool exhausted for DB_POOL_TIMEOUT, refused, or no answer in time
    if isinstance(exc, asyncpg.InterfaceError):
        return True  # the connection was closed under us
    if isinstance(exc, asyncpg.PostgresError):
        return _unavailable_sqlstate(exc.sqlstate)
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return _unavailable_sqlstate(sqlstate)
    # SQLite reports "database is locked" (busy timeout) and I/O trouble this way.
    return isinstance(exc, sa_exc.OperationalError)


def _unavailable_sqlstate(sqlstate: str) -> bool:
    return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES


# Background work that finds the database unavailable tries again after a short, capped
# backoff: a few seconds at most, so it resumes within seconds of the database's return
# (a restart, a failover) and never waits for a lease or a republish sweep to run out.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0


def retry_delay(failures: int, *, ceiling: float = RETRY_MAX_S) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, ...), jittered (between
    half and all of `longest_delay`) so a fleet does not knock all at once when it is back."""
    top = longest_delay(failures, ceiling=ceiling)
    return random.uniform(top / 2, top)


def longest_delay(failures: int, *, ceiling: float = RETRY_MAX_S) -> float:
    return min(RETRY_FIRST_S * 2.0 ** max(failures - 1, 0), ceiling)


async def back_off(
    exc: Exception, failures: int, *, doing: str, stop: asyncio.Event, logger: logging.Logger
) -> None:
    """After the `failures`-th failed round of background work in a row: one line when the
    database is away (a traceback for anything else), then its capped backoff, which `stop`
    cuts short. Call it from the `except` block."""
    delay = retry_delay(failures)
    if is_unavailable(exc):
        logger.warning("database unavailable, %s again in %.1f s: %r", doing, delay, exc)
    else:
        logger.exception("%s failed, again in %.1f s", doing, delay)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()


def is_conflict(exc: BaseException) -> bool:
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return sqlstate in _CONFLICT_SQLSTATES
