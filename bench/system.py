"""What the machine and its processes are doing, read from /proc (Linux only)."""

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), plus its reaped children."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """The process and all its live descendants (uvicorn workers, Celery pool processes)."""
    parents = _parents()
    found = [root]
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def processes_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if comm == name:
                pids.append(int(entry))
    return pids


def cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def tree_cpu(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds of every process in the trees under `roots`, by pid."""
    return cpu_by_pid(pid for root in roots for pid in tree(root))


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two samples; a process born in between started at zero."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the peak resident set of the process since it started."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass(frozen=True)
class MachineCpu:
    busy: float  # seconds of CPU spent by everything on the machine
    at: float  # monotonic time of the sample


def machine_cpu() -> MachineCpu:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    busy = user + nice + system + irq + softirq + steal
    return MachineCpu(busy / TICKS, time.monotonic())


def busy_cores(before: MachineCpu, after: MachineCpu) -> float:
    elapsed = after.at - before.at
    return (after.busy - before.busy) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class Quiet:
    load_1m: float  # os.getloadavg()[0] when the point started
    idle_busy_cores: float  # CPU in use by others while our processes sat idle, just before
    waited_s: float


# All waits of one run together stop at this, so a machine that never quietens down costs
# the run at most this much; after it each point waits only a short while.
WAIT_BUDGET_S = 900.0
_waited_s = 0.0


def wait_for_quiet(max_wait_s: float = 120.0, load_limit: float = 1.0) -> Quiet:
    """Wait until the machine is quiet enough to measure, at most `max_wait_s`.

    Quiet: the 1-minute load average is at most `load_limit`, or, since that average still
    remembers our own previous point for a minute or two, the CPU others use right now while
    ours sit idle (a 2 s sample) is under half a core.
    """
    global _waited_s
    max_wait_s = min(max_wait_s, max(10.0, WAIT_BUDGET_S - _waited_s))
    started = time.monotonic()
    while True:
        before = machine_cpu()
        time.sleep(2.0)
        in_use = busy_cores(before, machine_cpu())
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load <= load_limit or in_use < 0.5 or waited >= max_wait_s:
            _waited_s += waited
            return Quiet(round(load, 2), round(in_use, 2), round(waited, 1))
        time.sleep(5.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
