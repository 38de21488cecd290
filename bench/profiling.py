"""py-spy profiles of a service process under load, summarised as its top functions."""

import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.wrk import Load, run_wrk

ROOT = Path(__file__).resolve().parents[1]
LOOP_FRAMES = {
    "Runner.run (asyncio/runners.py)",
    "run_until_complete (asyncio/base_events.py)",
    "Worker.workloop (billiard/pool.py)",  # a Celery pool process
}


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is missing: make bench installs bench/requirements.lock")
    return found


def record_under_load(
    pid: int, url: str, load: Load, *, connections: int, seconds: float, out: Path
) -> dict[str, Any]:
    """Drive the load with wrk while py-spy samples `pid` at 100 Hz.

    --gil keeps only samples of the thread holding the GIL: the Python work that competes
    for the event loop's core. Idle pool threads drop out, and so does Argon2 hashing, which
    releases the GIL (its cost is measured on its own, see argon2_bound.py)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = threading.Thread(
        target=run_wrk,
        args=(url, load),
        kwargs={"connections": connections, "duration_s": seconds + 4, "nonce": "prof"},
    )
    driver.start()
    threading.Event().wait(2.0)  # let the load settle first
    record(pid, seconds, out)
    driver.join()
    return summarise(out)


def record(pid: int, seconds: float, out: Path) -> None:
    """py-spy record of one process, GIL holders only, as collapsed stacks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy(), "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", "100", "--gil"]
    subprocess.run(
        [*command, "-f", "raw", "-o", str(out)], check=True, capture_output=True, timeout=120
    )


def record_in_background(pid: int, seconds: float, out: Path, delay_s: float) -> threading.Thread:
    def run() -> None:
        threading.Event().wait(delay_s)
        record(pid, seconds, out)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _frame(frame: str) -> tuple[str, str]:
    """'function (path:line)' -> ('function (path)', package).

    py-spy already shortens paths to their import path (fastapi/routing.py, threading.py)."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rpartition(":")[0]
    for prefix in ("site-packages/", f"{ROOT}/"):
        path = path.split(prefix, 1)[-1]
    top = path.split("/", 1)[0].removesuffix(".py")
    if path.startswith("<sqlalchemy"):
        package = "sqlalchemy"
    elif path.startswith("<frozen") or top in sys.stdlib_module_names:
        package = "stdlib"
    else:
        package = top or "other"
    return f"{name} ({path})", package


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    package_inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        # Drop the start-up frames (runpy, app/__main__.py, uvicorn.run) above the event loop.
        loop = next((i for i, (name, _) in enumerate(frames) if name in LOOP_FRAMES), -1)
        frames = frames[loop + 1 :] or frames[-1:]
        leaf, package = frames[-1]
        self_time[leaf] += count
        by_package[package] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
        for pkg in {pkg for _, pkg in frames}:
            package_inclusive[pkg] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "self_by_package_pct": share(by_package, 20),
        "inclusive_by_package_pct": share(package_inclusive, 20),
        "top_self_pct": share(self_time, top),
        "top_inclusive_pct": share(inclusive, top),
        "raw_file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
    }
