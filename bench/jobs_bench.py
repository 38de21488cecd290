"""Background jobs: welcome email latency at a steady rate, and no-op job throughput."""

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import database, profiling, raw_celery, stats, system
from bench.deployment import Deployment
from bench.noop_jobs import NOOP_JOB
from bench.services import BROKER_URL, Process

PROFILE_S = 5.0  # of a job-running process while no-op jobs flow


@dataclass(frozen=True)
class Registration:
    sent: float  # unix time
    answered: float
    status: int
    user_id: str | None


async def paced_registrations(
    base_url: str, *, rate: float, seconds: float, nonce: str
) -> list[Registration]:
    """Send `rate` registrations per second for `seconds`, each at its own scheduled instant,
    whatever the earlier ones are doing (an open-loop client, so a slow server cannot slow
    the arrivals down and hide its latency)."""
    count = int(rate * seconds)
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        start = time.perf_counter() + 0.5

        async def one(i: int) -> Registration:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.time()
            try:
                response = await client.post(
                    "/api/v1/auth/register",
                    json={
                        "email": f"paced-{nonce}-{i}@bench.example.com",
                        "name": "Paced User",
                        "password": database.PASSWORD,
                    },
                )
            except httpx.HTTPError:
                return Registration(sent, time.time(), 0, None)
            answered = time.time()
            user_id = response.json().get("id") if response.status_code == 201 else None
            return Registration(sent, answered, response.status_code, user_id)

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def read_mail_log(path: Path) -> dict[str, float]:
    """Job id -> when the SMTP sink accepted its mail (Message-ID is <job id@domain>)."""
    arrivals: dict[str, float] = {}
    if not path.exists():
        return arrivals
    for line in path.read_text().splitlines():
        record = json.loads(line)
        job_id = record["message_id"].strip("<>").partition("@")[0]
        arrivals.setdefault(job_id, record["at"])  # a duplicate delivery keeps the first
    return arrivals


async def welcome_latency(
    d: Deployment, *, rate: float, seconds: float, nonce: str, mail_log: Path
) -> dict[str, Any]:
    quiet = system.wait_for_quiet(60)
    registrations = await paced_registrations(d.base_url, rate=rate, seconds=seconds, nonce=nonce)
    drain_s = await d.wait_for_jobs()
    await asyncio.sleep(0.5)  # the sink's last lines
    jobs = await database.welcome_jobs(d.database_url)
    arrivals = read_mail_log(mail_log)
    answered_by_user = {r.user_id: r.answered for r in registrations if r.user_id}
    from_commit: list[float] = []
    from_response: list[float] = []
    missing = 0
    for job_id, user_id, created_at in jobs:
        if user_id not in answered_by_user:
            continue  # not one of this run's registrations
        accepted = arrivals.get(job_id)
        if accepted is None:
            missing += 1
            continue
        from_commit.append(accepted - created_at.timestamp())
        from_response.append(accepted - answered_by_user[user_id])
    ok = [r for r in registrations if r.status == 201]
    span = max(r.sent for r in registrations) - min(r.sent for r in registrations)
    return {
        "backend": d.backend,
        "workers": d.workers,
        "target_rate": rate,
        "sent": len(registrations),
        "sent_rate": round((len(registrations) - 1) / span, 1) if span > 0 else None,
        "registered": len(ok),
        "failed": len(registrations) - len(ok),
        "register_latency": stats.summary_ms([r.answered - r.sent for r in ok]),
        "emails_received": len(from_commit),
        "emails_missing": missing,
        # created_at of the job row is set at its INSERT, just before the commit: this
        # slightly overstates commit-to-accepted, never understates it.
        "commit_to_smtp": stats.summary_ms(from_commit),
        # From the moment the client had its 201 (after the commit): a lower bound.
        "response_to_smtp": stats.summary_ms(from_response),
        "drain_s": drain_s,
        "load_1m": quiet.load_1m,
        "idle_busy_cores": quiet.idle_busy_cores,
    }


async def _wait_for_succeeded(
    url: str, timeout_s: float
) -> tuple[float | None, float, dict[str, int]]:
    """(seconds to the first success, seconds until none is left, final counts)."""
    started = time.monotonic()
    first: float | None = None
    watch = await database.JobWatch.open(url)
    try:
        while time.monotonic() - started < timeout_s:
            if first is None and await watch.any_done():
                first = time.monotonic() - started
            if first is not None and not await watch.any_left():
                break
            await asyncio.sleep(0.1)
    finally:
        await watch.close()
    total = time.monotonic() - started
    return first, total, await database.job_counts(url, name=NOOP_JOB)


async def service_noop_throughput(
    d: Deployment, *, count: int, label: str, profile: tuple[int, Path] | None = None
) -> dict[str, Any]:
    """Insert `count` due no-op jobs in one transaction; time from its commit until every
    job is succeeded. The transaction NOTIFYs the channel the dispatchers and relays listen
    on, as a producer outside the service does, so they start at once, not at their next poll.
    `profile`: (pid, file) to sample with py-spy for a few seconds while the jobs flow."""
    await database.delete_jobs(d.database_url)
    quiet = system.wait_for_quiet(60)
    processes = d.processes()
    cpu_before = system.tree_cpu(p.pid for p in processes)
    await database.insert_jobs(d.database_url, name=NOOP_JOB, count=count)
    profiler = (
        profiling.record_in_background(profile[0], PROFILE_S, profile[1], delay_s=1.5)
        if profile
        else None
    )
    first, total, counts = await _wait_for_succeeded(d.database_url, timeout_s=900)
    if profiler:
        await asyncio.to_thread(profiler.join)
    cpu = system.cpu_delta(cpu_before, system.tree_cpu(p.pid for p in processes))
    succeeded = counts.get("succeeded", 0)
    return {
        "label": label,
        "backend": d.backend,
        "jobs": count,
        "succeeded": succeeded,
        "seconds": round(total, 2),
        "jobs_per_s": round(succeeded / total, 1),
        "first_done_s": round(first, 2) if first is not None else None,
        # Without the wait for the first poll: the rate once jobs flow.
        "flowing_jobs_per_s": round(succeeded / (total - first), 1)
        if first is not None and total > first
        else None,
        "cpu_us_per_job": round(cpu / max(succeeded, 1) * 1e6, 1),
        "counts": counts,
        "load_1m": quiet.load_1m,
    }


def raw_celery_throughput(worker: Process, *, count: int, processes: int) -> dict[str, Any]:
    """Publish `count` no-op tasks, time from the first publish until the queue is empty and
    nothing is unacknowledged (acks_late: a task is acked once it ran)."""
    client = redis.Redis.from_url(BROKER_URL)
    quiet = system.wait_for_quiet(60)
    cpu_before = system.tree_cpu([worker.pid])
    started = time.monotonic()
    raw_celery.publish(count)
    published_s = time.monotonic() - started
    while time.monotonic() - started < 600:
        if client.llen(raw_celery.QUEUE) == 0 and client.hlen("unacked") == 0:
            break
        time.sleep(0.02)
    total = time.monotonic() - started
    cpu = system.cpu_delta(cpu_before, system.tree_cpu([worker.pid]))
    client.close()
    return {
        "label": f"raw Celery, {processes} process(es)",
        "backend": "raw-celery",
        "processes": processes,
        "jobs": count,
        "seconds": round(total, 2),
        "publish_s": round(published_s, 2),
        "jobs_per_s": round(count / total, 1),
        "cpu_us_per_job": round(cpu / count * 1e6, 1),
        "load_1m": quiet.load_1m,
    }
