"""The event-loop guard: a test fails when one callback of the loop holds it for 100 ms or more.

A callback is charged with what its thread did while it ran: computing, or sleeping in a
blocking call. Time the thread spent runnable but waiting for a CPU, because other processes
had the machine's cores (PostgreSQL, a Celery worker, a second test run), is not charged: on a
loaded CI machine a 40 ms step can take 100 ms of wall-clock time without the code being any
slower. Linux counts that wait per thread in /proc/<pid>/task/<tid>/schedstat (its second
field, in nanoseconds); where the file is missing, the guard charges wall-clock time.
"""

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

HELD_LIMIT_S = 0.1


def _runqueue_wait_clock() -> Callable[[], int]:
    """A clock of the nanoseconds the calling thread has waited for a CPU, 0 where unknown."""
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return lambda: 0
    return lambda: int(os.pread(fd, 128, 0).split()[1])


def _describe(handle: asyncio.Handle) -> str:
    """The task a step belongs to (its coroutine names the code), else the callback."""
    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


class LoopGuard:
    """Times every callback run on an asyncio loop while armed and keeps the slow ones."""

    def __init__(self, limit_s: float = HELD_LIMIT_S) -> None:
        self.limit_s = limit_s
        self.armed = False
        self.reports: list[str] = []
        self._clocks: dict[int, Callable[[], int]] = {}
        self._run: Callable[[asyncio.Handle], None] | None = None

    def install(self) -> None:
        """Wraps `asyncio.Handle._run`, the one place every loop runs a callback or task step."""
        if self._run is not None:
            return
        self._run = run = asyncio.Handle._run
        guard = self

        def timed_run(self: asyncio.Handle) -> None:
            if not guard.armed:
                return run(self)
            waited = guard._clock()
            start = time.monotonic()
            try:
                run(self)
            finally:
                wall = time.monotonic() - start
                held = wall - (guard._clock() - waited) / 1e9
                if held >= guard.limit_s:
                    guard.reports.append(
                        f"{_describe(self)} held the loop {held * 1000:.0f} ms"
                        f" ({wall * 1000:.0f} ms of wall-clock time)"
                    )

        asyncio.Handle._run = timed_run  # type: ignore[method-assign]

    def _clock(self) -> int:
        thread = threading.get_ident()
        clock = self._clocks.get(thread)
        if clock is None:
            clock = self._clocks[thread] = _runqueue_wait_clock()
        return clock()

    def take_reports(self) -> list[str]:
        reports, self.reports = self.reports, []
        return reports

    def __enter__(self) -> "LoopGuard":
        self.reports.clear()
        self.armed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.armed = False
