"""The event-loop guard reports a callback of the test's loop that computes or sleeps for 100 ms,
not one that only waited for a CPU another process had."""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from tests.loop_guard import LoopGuard


def spin(cpu_seconds: float) -> None:
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


async def test_a_blocking_sleep_is_reported(loop_guard: LoopGuard) -> None:
    await asyncio.sleep(0)
    time.sleep(0.15)  # noqa: ASYNC251  # the blocking call the guard is there to catch
    await asyncio.sleep(0)
    reports = loop_guard.take_reports()
    assert len(reports) == 1, reports
    assert "held the loop" in reports[0]


async def test_a_long_computation_is_reported(loop_guard: LoopGuard) -> None:
    await asyncio.sleep(0)
    spin(0.15)
    await asyncio.sleep(0)
    assert len(loop_guard.take_reports()) == 1


async def test_a_loop_in_a_thread_of_its_own_is_not_watched(loop_guard: LoopGuard) -> None:
    """Such a loop (aiosmtpd's) blocks nothing of the app's."""

    async def blocking() -> None:
        spin(0.15)

    await asyncio.to_thread(asyncio.run, blocking())
    assert loop_guard.take_reports() == []


async def test_short_steps_are_not_reported(loop_guard: LoopGuard) -> None:
    for _ in range(5):
        spin(0.03)
        await asyncio.sleep(0)
    assert loop_guard.take_reports() == []


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/schedstat").exists(),
    reason="the time a thread waits for a CPU is read from Linux's schedstat",
)
async def test_time_spent_waiting_for_a_cpu_is_not_charged(loop_guard: LoopGuard) -> None:
    """Pinned to one core beside a busy process, 60 ms of computing takes about twice as long."""
    cpu = min(os.sched_getaffinity(0))
    busy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); print('ready', flush=True)\n"
        "while True: pass",
        stdout=asyncio.subprocess.PIPE,
    )
    allowed = os.sched_getaffinity(0)
    try:
        assert busy.stdout is not None
        assert await busy.stdout.readline() == b"ready\n"
        os.sched_setaffinity(0, {cpu})
        await asyncio.sleep(0)
        start = time.monotonic()
        spin(0.06)
        wall = time.monotonic() - start
        await asyncio.sleep(0)
    finally:
        os.sched_setaffinity(0, allowed)
        busy.kill()
        await busy.wait()
    assert wall >= 0.1, f"no contention to test: the step took {wall * 1000:.0f} ms"
    assert loop_guard.take_reports() == []
