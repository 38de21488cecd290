"""The registration bound: how many Argon2 hashes per second the machine's cores can make."""

import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.core.security import password_hash
from bench import system

PARAMETERS = re.compile(r"^\$(argon2\w+)\$v=\d+\$m=(\d+),t=(\d+),p=(\d+)\$")


def measure(iterations: int) -> dict[str, Any]:
    """Hash with the service's configured hasher, in this process, one hash at a time.

    The bound uses the CPU time of a hash (steadier than wall time on a shared machine):
    registrations can at best keep every core busy hashing, so bound = cores / hash time.
    """
    sample = password_hash.hash("warm-up-password")
    found = PARAMETERS.match(sample)
    cpu: list[float] = []
    wall: list[float] = []
    for i in range(iterations):
        started_cpu, started_wall = time.thread_time(), time.perf_counter()
        password_hash.hash(f"bench-password-{i}")
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    hash_s = statistics.median(cpu)
    # The same hashes on one thread per core at once (argon2-cffi releases the GIL), as the
    # service runs them: 19 MiB each, so they also compete for caches and memory bandwidth.
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=system.CORES) as pool:
        list(pool.map(password_hash.hash, (f"bench-password-{i}" for i in range(iterations))))
    parallel_per_s = iterations / (time.perf_counter() - started)
    return {
        "algorithm": found.group(1) if found else "unknown",
        "memory_kib": int(found.group(2)) if found else None,
        "time_cost": int(found.group(3)) if found else None,
        "parallelism": int(found.group(4)) if found else None,
        "iterations": iterations,
        "hash_cpu_ms_median": round(hash_s * 1000, 2),
        "hash_cpu_ms_mean": round(statistics.mean(cpu) * 1000, 2),
        "hash_wall_ms_median": round(statistics.median(wall) * 1000, 2),
        "cores": system.CORES,
        "bound_per_s": round(system.CORES / hash_s, 1),
        "parallel_hashes_per_s": round(parallel_per_s, 1),
    }
