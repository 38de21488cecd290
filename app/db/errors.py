"""Which database errors mean "unavailable, retry shortly" rather than a bug."""

import asyncpg
from sqlalchemy import exc as sa_exc

# SQLSTATEs of a server that is going away, overloaded, or cancelled our statement on a timeout.
_UNAVAILABLE_SQLSTATES = {
    "53300",  # too_many_connections
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
}


# What the asyncpg driver raises itself, on the reads that bypass SQLAlchemy (Database.fetch_one).
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
