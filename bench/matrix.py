"""What one `make bench` measures: the full matrix, or a short one with BENCH_QUICK=1.

BENCH_PARTS picks sections (comma-separated, default all): argon2, http, latency, throughput,
hostile, tracing, size (BENCH_SIZE_LARGE=1: its 1,000,000-row form), pgbouncer.
BENCH_BACKENDS, BENCH_WORKERS, BENCH_CONNECTIONS, BENCH_SCENARIOS and BENCH_DURATION narrow or
change the HTTP matrix, e.g. to measure one point again: BENCH_BACKENDS=pg-embedded
BENCH_WORKERS=1 BENCH_SCENARIOS=users_me.
"""

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

BACKENDS = ("pg-embedded", "pg-celery", "sqlite")
SCENARIOS = ("users_me", "users_by_id", "token", "register")
PARTS = ("argon2", "http", "latency", "throughput", "hostile", "tracing", "size", "pgbouncer")


@dataclass(frozen=True)
class Matrix:
    quick: bool
    parts: tuple[str, ...]
    duration_s: float  # each measured wrk point
    warmup_s: float  # an unmeasured wrk run at the same load before it
    connections: tuple[int, ...]
    workers: tuple[int, ...]
    backends: tuple[str, ...]
    scenarios: tuple[str, ...]
    seed_users: int
    token_users: int  # superusers logged in before the points: one token per connection
    argon2_iterations: int
    # Registrations per second for the welcome email latency: the 50, and one the
    # service sustains with room to spare, to tell job latency from an overloaded API.
    latency_rates: tuple[float, ...]
    latency_s: float
    noop_jobs: int
    job_processes: tuple[int, ...]  # Celery worker processes (and embedded API workers)
    profile_s: float
    hostile_s: float  # each phase of the hostile part: calm, then attacked
    quiet_wait_s: float  # the longest wait for a quiet machine before a point

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _narrowed(m: Matrix) -> Matrix:
    def numbers(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = os.environ.get(name)
        return tuple(int(x) for x in value.split(",")) if value else default

    def names(name: str, default: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
        value = os.environ.get(name)
        if not value:
            return default
        if set(value.split(",")) - set(known):
            raise SystemExit(f"{name}: choose from {known}")
        return tuple(value.split(","))

    return replace(
        m,
        backends=names("BENCH_BACKENDS", m.backends, BACKENDS),
        scenarios=names("BENCH_SCENARIOS", m.scenarios, SCENARIOS),
        workers=numbers("BENCH_WORKERS", m.workers),
        connections=numbers("BENCH_CONNECTIONS", m.connections),
        duration_s=float(os.environ.get("BENCH_DURATION", m.duration_s)),
    )


def from_environment() -> Matrix:
    return _narrowed(_base())


def _base() -> Matrix:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false")
    parts = tuple(p for p in os.environ.get("BENCH_PARTS", ",".join(PARTS)).split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"BENCH_PARTS: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    if quick:
        return Matrix(
            quick=True,
            parts=parts,
            duration_s=5,
            warmup_s=2,
            connections=(64,),
            workers=(1,),
            backends=("pg-embedded", "sqlite"),
            scenarios=SCENARIOS,
            seed_users=2_000,
            token_users=64,
            argon2_iterations=50,
            latency_rates=(50,),
            latency_s=5,
            noop_jobs=2_000,
            job_processes=(1,),
            profile_s=5,
            hostile_s=20,
            quiet_wait_s=30,
        )
    return Matrix(
        quick=False,
        parts=parts,
        duration_s=15,
        warmup_s=3,
        connections=(64, 256),
        workers=(1, 2),
        backends=BACKENDS,
        scenarios=SCENARIOS,
        seed_users=10_000,
        token_users=256,
        argon2_iterations=300,
        latency_rates=(50, 25),
        latency_s=20,
        noop_jobs=10_000,
        job_processes=(1, 2),
        profile_s=10,
        hostile_s=60,
        quiet_wait_s=120,
    )
