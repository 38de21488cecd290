"""Rate limits on the endpoints that guess passwords or send mail, per client and per email.

Counters live in Redis when one is configured, so every API process shares them; otherwise in
this process. A moving window, so a burst at a window's edge cannot double the limit.
"""

import hashlib
import logging
import math
import time
from typing import Any, Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.errors import TooManyRequests

logger = logging.getLogger(__name__)

Action = Literal["register", "token", "forgot"]

# Redis answers on the local network in a millisecond; a slower one must not hold up logins.
REDIS_TIMEOUT_S = 0.5
# After a storage failure, requests skip the limits for this long instead of each one waiting
# for Redis to fail again.
FAIL_OPEN_S = 5.0


class RateLimits:
    """The limits of one app, created once; `check` is the only call on the request path."""

    def __init__(self, settings: Settings) -> None:
        self.items: dict[Action, list[RateLimitItem]] = {}
        self._pool: ConnectionPool | None = None
        self._storage_errors: tuple[type[Exception], ...] = ()
        self._failing_until = 0.0
        if not settings.rate_limit_enabled:
            return
        self.items = {
            "register": parse_many(settings.rate_limit_register),
            "token": parse_many(settings.rate_limit_token),
            "forgot": parse_many(settings.rate_limit_forgot),
        }
        self._limiter = MovingWindowRateLimiter(self._storage(settings.rate_limit_redis_url))

    def _storage(self, redis_url: str) -> Storage:
        if not redis_url:
            return MemoryStorage()
        # Our own pool: redis-py retries a refused connection ten times with backoff by
        # default (seconds per request while Redis is down), and we close the pool at shutdown.
        self._pool = ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), retries=0),
        )
        self._storage_errors = (RedisError, StorageError)
        options: dict[str, Any] = {"connection_pool": self._pool}
        return RedisStorage(
            f"async+{redis_url}", implementation="redispy", key_prefix="rate-limit", **options
        )

    async def check(self, action: Action, *, client: str, email: str) -> None:
        """Count one request against the client and the email; TooManyRequests over a limit.

        When the storage is unreachable the request goes through: a Redis outage must not
        take logins down with it.
        """
        items = self.items.get(action)
        if not items or time.monotonic() < self._failing_until:
            return
        # The email is hashed so that no address sits in Redis; lowercased as users are stored.
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        try:
            for identifiers in ((action, "client", client), (action, "email", digest)):
                for item in items:
                    if not await self._limiter.hit(item, *identifiers):
                        stats = await self._limiter.get_window_stats(item, *identifiers)
                        wait = math.ceil(stats.reset_time - time.time())
                        raise TooManyRequests(retry_after=max(wait, 1))
        except self._storage_errors as exc:
            if time.monotonic() >= self._failing_until:  # not one warning per request
                logger.warning(
                    "rate limit storage unavailable, requests pass unlimited for %.0f s: %r",
                    FAIL_OPEN_S,
                    exc,
                )
            self._failing_until = time.monotonic() + FAIL_OPEN_S

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
