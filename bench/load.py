"""One measured point: wrk at a fixed concurrency, with the CPU every party spent meanwhile."""

import resource
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bench import database, system
from bench.services import Process
from bench.wrk import Load, WrkResult, run_wrk


@dataclass(frozen=True)
class Target:
    """What is measured and which processes serve it."""

    kind: str  # baseline | service
    backend: str  # pg (baseline), pg-embedded, pg-celery, sqlite
    workers: int
    url: str
    api: Process
    worker: Process | None
    pg_database: str | None  # whose PostgreSQL backends to count, None for SQLite


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class _Sample:
    api: dict[int, float]
    worker: dict[int, float]
    db: dict[int, float]
    others_known: dict[int, float]  # Redis and the SMTP sink
    wrk: float
    machine: system.MachineCpu


async def _sample(target: Target, extra_pids: list[int]) -> _Sample:
    db_pids = await database.backend_pids(target.pg_database) if target.pg_database else []
    return _Sample(
        api=system.tree_cpu([target.api.pid]),
        worker=system.tree_cpu([target.worker.pid]) if target.worker else {},
        db=system.cpu_by_pid(db_pids),
        others_known=system.cpu_by_pid(extra_pids),
        wrk=_children_cpu(),
        machine=system.machine_cpu(),
    )


async def measure(
    target: Target,
    scenario: str,
    load: Load,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    quiet_wait_s: float,
    nonce: str,
    extra_pids: list[int],
) -> dict[str, Any]:
    if warmup_s > 0:  # fills pools and caches; its registrations are not counted
        run_wrk(target.url, load, connections=connections, duration_s=warmup_s, nonce=f"{nonce}w")
    quiet = system.wait_for_quiet(quiet_wait_s)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    before = await _sample(target, extra_pids)
    result: WrkResult = run_wrk(
        target.url, load, connections=connections, duration_s=duration_s, nonce=nonce
    )
    # PostgreSQL backends opened during the run started at zero CPU: sample them again.
    after = await _sample(target, extra_pids)
    target.api.record_peak_rss()
    if target.worker:
        target.worker.record_peak_rss()

    elapsed = after.machine.at - before.machine.at
    api_s = system.cpu_delta(before.api, after.api)
    worker_s = system.cpu_delta(before.worker, after.worker)
    db_s = system.cpu_delta(before.db, after.db)
    known_s = system.cpu_delta(before.others_known, after.others_known)
    wrk_s = after.wrk - before.wrk
    machine_s = after.machine.busy - before.machine.busy
    requests = max(result.requests, 1)

    def per_request_us(seconds: float) -> float:
        return round(seconds / requests * 1e6, 1)

    point = {
        "kind": target.kind,
        "backend": target.backend,
        "workers": target.workers,
        "scenario": scenario,
        "connections": connections,
        "duration_s": round(result.duration_s, 2),
        "started_at": started_at,
        "load_1m": quiet.load_1m,
        "idle_busy_cores": quiet.idle_busy_cores,
        "waited_for_quiet_s": quiet.waited_s,
        "rps": round(result.rps, 1),
        "requests": result.requests,
        "errors": result.errors,
        "non_2xx": result.status_errors,
        "socket_errors": result.connect_errors + result.read_errors + result.write_errors,
        "timeouts": result.timeouts,
        "p50_ms": round(result.p50_ms, 2),
        "p90_ms": round(result.p90_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "max_ms": round(result.max_ms, 2),
        "api_cpu_us": per_request_us(api_s),
        "worker_cpu_us": per_request_us(worker_s),
        "db_cpu_us": per_request_us(db_s),
        "wrk_cpu_us": per_request_us(wrk_s),
        "machine_busy_cores": round(machine_s / elapsed, 2),
        # CPU nobody in this benchmark spent: other people's work on the shared machine.
        "other_cores": round(
            max(0.0, machine_s - api_s - worker_s - db_s - wrk_s - known_s) / elapsed, 2
        ),
        "raw": asdict(result),
    }
    print(
        f"  {target.kind:8} {target.backend:11} w{target.workers} c{connections:<3} "
        f"{scenario:15} {point['rps']:8.1f} req/s  p50 {point['p50_ms']:7.2f} ms  "
        f"p99 {point['p99_ms']:8.2f} ms  err {point['errors']:<5} "
        f"cpu {point['api_cpu_us']:6.0f} us  load {quiet.load_1m:.2f} "
        f"other {point['other_cores']:.2f} cores",
        flush=True,
    )
    return point


def now_nonce() -> str:
    return f"{int(time.time() * 1000) % 100_000_000}"
