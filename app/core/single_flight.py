"""One computation shared by every concurrent caller, its result reused for a short while.

For endpoints anyone may call that cost a query (readiness probes, metric scrapes): however
many ask at once, one computation runs, and its result answers everyone for `max_age` seconds.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, compute: Callable[[], Awaitable[T]], *, max_age: float) -> None:
        self.compute = compute
        self.max_age = max_age
        self._cached: tuple[float, T] | None = None  # when it was computed, and the value
        self._running: asyncio.Task[T] | None = None

    async def get(self) -> T:
        if self._cached is not None and time.monotonic() - self._cached[0] < self.max_age:
            return self._cached[1]
        if self._running is None:
            self._running = asyncio.create_task(self._refresh())
        # Shielded: a caller that gives up does not cancel the others' computation.
        return await asyncio.shield(self._running)

    async def _refresh(self) -> T:
        try:
            value = await self.compute()
        finally:
            self._running = None
        self._cached = (time.monotonic(), value)
        return value
