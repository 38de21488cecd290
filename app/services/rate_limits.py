"""Rate limits that slow attackers down without locking owners out.

Counters live in Redis when one is configured, so every API process shares them; otherwise in
this process. A moving window, so a burst at a window's edge cannot double the limit.

Register and forgot-password count every request, per client and per email (`check`).
Everything that checks a secret counts failures only (`begin`), so an owner's correct password
or valid link never uses up a budget. A failure counts per (target, client), tightly; per
client over all targets (credential stuffing); and per target over all clients. The target is
a login's email, or the user a refresh token, an email link or an access token names; an
unknown token or a forged link counts per client only.

What keeps owners in: a target's own budget being spent refuses only the clients that have a
failure on record for that target. Any other client may still try, so the owner logs in from
their own device while someone hammers the account from elsewhere, and a distributed attack
gets one guess per address and window. The settings per action are in `_BUDGETS`.

The per-(target, client) count is taken before the attempt runs, so parallel guesses cannot
all slip in before the first failure is recorded, and a success clears it; the other two
record a failure once it happened (a burst can pass them by the requests in flight). A refused
attempt answers 429 with Retry-After before any password hashing or database work. IPv6
clients are counted per /64, the block one subscriber usually holds.
"""

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.errors import TooManyRequests

logger = logging.getLogger(__name__)

Action = Literal["register", "forgot"]
Login = Literal["token", "admin"]
Guarded = Literal["refresh", "verify", "reset", "password"]
Kind = Login | Guarded

# Redis answers on the local network in a millisecond; a slower one must not hold up logins.
REDIS_TIMEOUT_S = 0.5
# After a storage failure, requests skip the limits for this long instead of each one waiting
# for Redis to fail again.
FAIL_OPEN_S = 5.0
IPV6_PREFIX = 64
MAX_CLIENT_CHARS = 64  # a trusted proxy may forward anything; keys stay small

Counter = tuple[list[RateLimitItem], tuple[str, ...]]


def client_bucket(host: str) -> str:
    """The key a client address is counted under: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:MAX_CLIENT_CHARS]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def _digest(email: str) -> str:
    # Hashed so that no address sits in Redis; lowercased as users are stored.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


class RateLimits:
    """The limits of one app, created once; the request path calls `check` or `begin*`."""

    def __init__(self, settings: Settings) -> None:
        self.items: dict[str, list[RateLimitItem]] = {}
        self._pool: ConnectionPool | None = None
        self._storage_errors: tuple[type[Exception], ...] = ()
        self._failing_until = 0.0
        if not settings.rate_limit_enabled:
            return
        names = {"register", "forgot"}.union(*_BUDGETS.values())
        self.items = {name: parse_many(getattr(settings, f"rate_limit_{name}")) for name in names}
        self._limiter = MovingWindowRateLimiter(self._storage(settings))

    def _storage(self, settings: Settings) -> Storage:
        redis_url = settings.rate_limit_redis_url
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
            f"async+{redis_url}",
            implementation="redispy",
            key_prefix=settings.rate_limit_key_prefix,
            **options,
        )

    @property
    def _off(self) -> bool:
        return not self.items or time.monotonic() < self._failing_until

    @asynccontextmanager
    async def _fail_open(self) -> AsyncIterator[None]:
        """A Redis outage must not take logins down with it: the request goes through."""
        try:
            yield
        except self._storage_errors as exc:
            if time.monotonic() >= self._failing_until:  # not one warning per request
                logger.warning(
                    "rate limit storage unavailable, requests pass unlimited for %.0f s: %r",
                    FAIL_OPEN_S,
                    exc,
                )
            self._failing_until = time.monotonic() + FAIL_OPEN_S

    async def check(self, action: Action, *, client: str, email: str) -> None:
        """Count one request against the client and the email; TooManyRequests over a limit."""
        if self._off:
            return
        items, digest = self.items[action], _digest(email)
        async with self._fail_open():
            for identifiers in ((action, "client", client), (action, "email", digest)):
                for item in items:
                    if not await self._limiter.hit(item, *identifiers):
                        raise TooManyRequests(retry_after=await self._wait(item, identifiers))

    async def begin_login(self, kind: Login, *, client: str, email: str) -> "Attempt":
        """Admit one login attempt, or refuse it with TooManyRequests (see the module doc)."""
        attempt = await self.begin(kind, client=client)
        await attempt.for_target(_digest(email))
        return attempt

    async def begin(self, kind: Kind, *, client: str) -> "Attempt":
        """Admit one attempt from this client, or refuse it; `Attempt.for_target` goes on."""
        if self._off:
            return Attempt(self)
        own = (self.items[_BUDGETS[kind][1]], (kind, "client", client))
        async with self._fail_open():
            await self._refuse_if_spent(own)
            return Attempt(self, kind=kind, client=client, on_failure=(own,))
        return Attempt(self)  # the storage failed: let this one through

    async def _reserve(self, counter: Counter) -> None:
        items, identifiers = counter
        for item in items:
            if not await self._limiter.hit(item, *identifiers):  # lost a race to a sibling
                raise TooManyRequests(retry_after=await self._wait(item, identifiers))

    async def _refuse_if_spent(
        self, counter: Counter, stats: list[tuple[RateLimitItem, WindowStats]] | None = None
    ) -> None:
        wait = _wait(stats if stats is not None else await self._stats(counter))
        if wait is not None:
            raise TooManyRequests(retry_after=wait)

    async def _stats(self, counter: Counter) -> list[tuple[RateLimitItem, WindowStats]]:
        items, identifiers = counter
        return [(item, await self._limiter.get_window_stats(item, *identifiers)) for item in items]

    async def _wait(self, item: RateLimitItem, identifiers: Sequence[str]) -> int:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        return _seconds_until(stats.reset_time)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


# Per kind, the settings of its counters: per (target, client), per client, per target.
_BUDGETS: dict[Kind, tuple[str, str, str]] = {
    "token": ("token", "token_client", "token_email"),
    "admin": ("admin_login", "token_client", "token_email"),
    "refresh": ("refresh", "refresh", "refresh"),
    "verify": ("verify", "verify", "verify"),
    "reset": ("reset", "reset", "reset"),
    "password": ("password_change", "password_change", "password_change"),
}


class Attempt:
    """One admitted attempt: its failure is counted, its success forgives what it reserved."""

    def __init__(
        self,
        limits: RateLimits,
        *,
        kind: Kind | None = None,
        client: str = "",
        on_failure: tuple[Counter, ...] = (),
    ) -> None:
        self._limits = limits
        self._kind = kind
        self._client = client
        self._on_failure = on_failure
        self._reserved: Counter | None = None

    @property
    def is_counted(self) -> bool:
        """False when limits are off or the storage is down: nothing to count against."""
        return self._kind is not None and not self._limits._off

    async def for_target(self, target: str | None) -> None:
        """Count this attempt against what it targets too (an email, a user); TooManyRequests
        when this client may not try it now. None (an unknown token) counts per client only."""
        limits, kind = self._limits, self._kind
        if target is None or kind is None or not self.is_counted:
            return
        pair_setting, _, shared_setting = _BUDGETS[kind]
        pair = (limits.items[pair_setting], (kind, "pair", target, self._client))
        shared = (limits.items[shared_setting], (kind, "target", target))
        async with limits._fail_open():
            pair_stats = await limits._stats(pair)
            await limits._refuse_if_spent(pair, pair_stats)
            # The target's budget is spent: refuse only the clients that failed on it before.
            if any(s.remaining < item.amount for item, s in pair_stats):
                target_wait = _wait(await limits._stats(shared))
                if target_wait is not None:
                    pair_clears = max(_seconds_until(s.reset_time) for _, s in pair_stats)
                    raise TooManyRequests(retry_after=min(target_wait, pair_clears))
            await limits._reserve(pair)
            self._reserved = pair
            self._on_failure = (*self._on_failure, shared)

    @asynccontextmanager
    async def counting(self, *failures: type[Exception]) -> AsyncIterator[None]:
        """Run the attempt: a `failures` error is counted and re-raised; success forgives."""
        try:
            yield
        except failures:
            await self.failed()
            raise
        await self.succeeded()

    async def failed(self) -> None:
        limits = self._limits
        if limits._off:
            return
        async with limits._fail_open():
            for items, identifiers in self._on_failure:
                for item in items:
                    await limits._limiter.hit(item, *identifiers)

    async def succeeded(self) -> None:
        limits = self._limits
        if self._reserved is None or limits._off:
            return
        items, identifiers = self._reserved
        async with limits._fail_open():
            for item in items:
                await limits._limiter.clear(item, *identifiers)


def _wait(stats: list[tuple[RateLimitItem, WindowStats]]) -> int | None:
    """Seconds until every spent limit among `stats` has room again; None when none is spent."""
    spent = [_seconds_until(s.reset_time) for _, s in stats if s.remaining <= 0]
    return max(spent) if spent else None


def _seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 1)
