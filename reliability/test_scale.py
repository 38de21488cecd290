"""Scale-out: 2 API processes and 2 Celery workers on one PostgreSQL and one Redis.

SCALE_REGISTRATIONS (default 10,000) registrations are spread round-robin over both APIs with
at most SCALE_CONCURRENCY in flight, and then, from the sink and the job_runs table: every
email delivered, none twice, and no job ever running in two places at once. A comparable run
of 1 API + 1 worker (SCALE_BASELINE_REGISTRATIONS, default 2,000) gives the throughput beside.
All processes share this machine's cores: the figures say what one box does, not a cluster.
"""

import os
import statistics
from typing import Any

import pytest

from reliability.harness import Deployment, conclude, verdict
from reliability.load import RegistrationStream
from reliability.results import record

pytestmark = pytest.mark.scale

REGISTRATIONS = int(os.environ.get("SCALE_REGISTRATIONS", "10000"))
BASELINE_REGISTRATIONS = int(os.environ.get("SCALE_BASELINE_REGISTRATIONS", "2000"))
CONCURRENCY = int(os.environ.get("SCALE_CONCURRENCY", "32"))
SETTLE_TIMEOUT_S = 900.0
RUNS: dict[str, dict[str, Any]] = {}


def latency(stream: RegistrationStream, deploy: Deployment) -> dict[str, float]:
    """Seconds from each 201 to its email's arrival at the sink: p50, p99, max."""
    arrived: dict[str, float] = {}
    for delivery in deploy.sink.snapshot():
        arrived.setdefault(delivery.recipient, delivery.at)
    lags = sorted(
        arrived[r.email] - (r.attempts[-1].finished or 0.0)
        for r in stream.registrations
        if r.accepted and r.email in arrived
    )
    if len(lags) < 2:
        return {}
    cuts = statistics.quantiles(lags, n=100)
    return {"p50": round(cuts[49], 3), "p99": round(cuts[98], 3), "max": round(lags[-1], 3)}


def recorded_as(deploy: Deployment, name: str) -> str:
    """Runs through a PgBouncer (RELIABILITY_PGBOUNCER=1) are recorded beside direct ones."""
    return f"{name}-pgbouncer" if deploy.database_url != deploy.direct_url else name


async def run(deploy: Deployment, name: str, *, apis: int, workers: int, count: int) -> None:
    name = recorded_as(deploy, name)
    await deploy.start_redis()
    servers = [await deploy.start_api(f"api{n + 1}") for n in range(apis)]
    for n in range(workers):
        await deploy.start_worker(f"worker{n + 1}")
    stream = RegistrationStream(
        [s.base_url for s in servers],
        count=count,
        prefix=name,
        rate=None,  # as fast as CONCURRENCY requests in flight allow
        concurrency=CONCURRENCY,
        attempt_timeout_s=60.0,
        deadline_s=600.0,
    )
    await stream.run()
    first_request = stream.started_at
    figures = await deploy.settle_and_record(
        stream,
        fault="none",
        settle_timeout=SETTLE_TIMEOUT_S,
        extra={"api_processes": apis, "worker_processes": workers, "concurrency": CONCURRENCY},
    )
    deliveries = deploy.sink.snapshot()
    last_email = max((d.at for d in deliveries), default=first_request)
    stream_s = stream.finished_at - first_request
    figures |= {
        "registrations_per_s": round(figures["accepted"] / stream_s, 1),
        "emails_per_s_end_to_end": round(figures["delivered"] / (last_email - first_request), 1),
        "email_after_201_seconds": latency(stream, deploy),
    }
    RUNS[name] = figures
    conclude(name, deploy, figures, verdict(figures))


async def test_baseline_one_api_one_worker(deploy: Deployment) -> None:
    await run(deploy, "scale-1api-1worker", apis=1, workers=1, count=BASELINE_REGISTRATIONS)


async def test_two_apis_two_workers(deploy: Deployment) -> None:
    await run(deploy, "scale-2api-2worker", apis=2, workers=2, count=REGISTRATIONS)
    scaled = RUNS[recorded_as(deploy, "scale-2api-2worker")]
    baseline = RUNS.get(recorded_as(deploy, "scale-1api-1worker"))
    comparison: dict[str, Any] = {
        "registrations": scaled["registrations"],
        "registrations_per_s": scaled["registrations_per_s"],
        "emails_per_s_end_to_end": scaled["emails_per_s_end_to_end"],
        "job_runs": scaled["evidence"]["runs"],
        "jobs_with_several_runs": scaled["evidence"]["jobs_with_several_runs"],
        "overlapping_runs": scaled["overlapping_runs"],
        "lost": scaled["lost"],
        "duplicated": scaled["duplicated"],
        "verdict": scaled["verdict"],
    }
    if baseline:
        comparison["baseline"] = {
            "registrations": baseline["registrations"],
            "registrations_per_s": baseline["registrations_per_s"],
            "emails_per_s_end_to_end": baseline["emails_per_s_end_to_end"],
        }
        comparison["speedup_registrations"] = round(
            scaled["registrations_per_s"] / baseline["registrations_per_s"], 2
        )
    record(recorded_as(deploy, "scale-out"), comparison)
