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


def _never_waited() -> int:
    return 0


def _runqueue_wait_clock() -> Callable[[], int]:
    """A clock of the nanoseconds the calling thread has waited for a CPU, 0 where unknown."""
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return _never_waited
    return lambda: int(os.pread(fd, 128, 0).split()[1])


def _describe(handle: asyncio.Handle) -> str:
    """The task a step belongs to (its coroutine names the code), else the callback."""
    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


class LoopGuard:
    """While entered, times every callback that a loop runs on the entering thread (the test's
    loop; aiosmtpd's, in a thread of its own, is not the app's) and keeps the slow ones."""

    def __init__(self, limit_s: float = HELD_LIMIT_S) -> None:
        self.limit_s = limit_s
        self.reports: list[str] = []
        self._watched: int | None = None  # the thread whose loop is timed
        self._waited: Callable[[], int] = _never_waited
        self._clocks: dict[int, Callable[[], int]] = {}
        self._installed = False

    def install(self) -> None:
        """Wraps `asyncio.Handle._run`, the one place every loop runs a callback or task step."""
        if self._installed:
            return
        self._installed = True
        run = asyncio.Handle._run
        guard = self

        def timed_run(self: asyncio.Handle) -> None:
            if threading.get_ident() != guard._watched:
                return run(self)
            waited = guard._waited()
            start = time.monotonic()
            try:
                run(self)
            finally:
                wall = time.monotonic() - start
                held = wall - (guard._waited() - waited) / 1e9
                if held >= guard.limit_s:
                    guard.reports.append(
                        f"{_describe(self)} held the loop {held * 1000:.0f} ms"
                        f" ({wall * 1000:.0f} ms of wall-clock time)"
                    )

        asyncio.Handle._run = timed_run  # type: ignore[method-assign]

    def take_reports(self) -> list[str]:
        reports, self.reports = self.reports, []
        return reports

    def __enter__(self) -> "LoopGuard":
        thread = threading.get_ident()
        if thread not in self._clocks:
            self._clocks[thread] = _runqueue_wait_clock()
        self._waited = self._clocks[thread]
        self.reports.clear()
        self._watched = thread
        return self

    def __exit__(self, *exc: Any) -> None:
        self._watched = None
