"""Fault injection: a stream of registrations against real processes while something breaks.

Each scenario drives REGISTRATIONS registrations (distinct emails, paced, each retried with its
Idempotency-Key on a 503 or a broken connection), injects its fault a third of the way in,
waits (bounded) for every accepted registration's email, and holds the service to the same
targets: every registration accepted, 0 lost, 0 duplicated, no 5xx but 503, no job run in
two places at once. The figures go to reliability/results/<scenario>.json.
"""

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import httpx
import pytest

from reliability.harness import Deployment, conclude, deployment, sleep_until, verdict
from reliability.load import RegistrationStream
from reliability.postgres import private_cluster

pytestmark = pytest.mark.reliability

REGISTRATIONS = 300
RATE = 10.0  # registrations started per second: the stream lasts about 30 s
FAULT_AFTER = REGISTRATIONS // 3
SMTP_DELAY_S = 0.2  # a relay's think time, so a kill catches deliveries in progress
# A database restart: 150 registrations, as an operator tried it, and every mail within
# RECOVERY_GOAL_S of the database's return.
PG_REGISTRATIONS = 150
RECOVERY_GOAL_S = 30.0
# Celery's 2 worker children at 0.3 s a mail fall behind 10 registrations a second: when the
# database stops, deliveries are queued in Redis and in progress, and meet it unavailable.
PG_SMTP_DELAY_S = 0.3


async def mid_delivery(deploy: Deployment, stream: RegistrationStream | None = None) -> None:
    """Until the sink is in the middle of receiving a message, and `stream` has a request in
    flight (at most 15 s; else the fault still lands mid-stream, only not mid-delivery)."""

    def busy() -> bool:
        return deploy.sink.busy > 0 and (stream is None or bool(stream.in_flight))

    with contextlib.suppress(TimeoutError):
        await sleep_until(busy, within=15, interval=0.002)


async def test_a_broker_stopped_for_10_s(deploy: Deployment) -> None:
    """Redis has no persistence here: the messages queued when it dies are gone for good,
    and the relay must publish those jobs again from the table."""
    redis = await deploy.start_redis()
    api = await deploy.start_api()
    await deploy.start_worker()
    # 2 worker children at 0.5 s a message fall behind 10 registrations a second: a backlog
    # of messages sits in Redis when it dies.
    deploy.sink.delay_s = 0.5
    stream = RegistrationStream([api.base_url], count=REGISTRATIONS, prefix="broker", rate=RATE)
    running = asyncio.create_task(stream.run())
    await stream.wait_answered(FAULT_AFTER)
    queued = (await redis.command("LLEN", "jobs")).decode()
    await asyncio.to_thread(redis.kill)
    await asyncio.sleep(10)
    redis.start()
    await redis.wait_ready()
    back_at = time.monotonic()
    await running
    figures = await deploy.settle_and_record(
        stream,
        fault="private Redis broker SIGKILLed, restarted empty 10 s later (Celery)",
        extra={"messages_in_redis_at_kill": int(queued.lstrip(":") or 0)},
        recovered_at=back_at,
    )
    conclude("a-broker-outage", deploy, figures, verdict(figures))


async def test_b_celery_worker_sigkilled(deploy: Deployment) -> None:
    await deploy.start_redis()
    api = await deploy.start_api()
    first = await deploy.start_worker("worker1")
    deploy.sink.delay_s = SMTP_DELAY_S
    stream = RegistrationStream([api.base_url], count=REGISTRATIONS, prefix="worker", rate=RATE)
    running = asyncio.create_task(stream.run())
    await stream.wait_answered(FAULT_AFTER)
    await mid_delivery(deploy)
    busy = deploy.sink.busy
    await asyncio.to_thread(first.kill)
    await asyncio.sleep(2)
    await deploy.start_worker("worker2")
    back_at = time.monotonic()
    await running
    figures = await deploy.settle_and_record(
        stream,
        fault="Celery worker (prefork, 2 children) SIGKILLed, a new one started 2 s later",
        extra={"deliveries_in_progress_at_kill": busy},
        recovered_at=back_at,
    )
    conclude("b-worker-killed", deploy, figures, verdict(figures))


async def test_c_api_sigkilled_and_restarted(deploy: Deployment) -> None:
    api = await deploy.start_api()
    deploy.sink.delay_s = SMTP_DELAY_S
    stream = RegistrationStream([api.base_url], count=REGISTRATIONS, prefix="apikill", rate=RATE)
    running = asyncio.create_task(stream.run())
    await stream.wait_answered(FAULT_AFTER)
    await mid_delivery(deploy, stream)
    busy, in_flight = deploy.sink.busy, len(stream.in_flight)
    await asyncio.to_thread(api.kill)
    await asyncio.sleep(2)
    api.start()
    await api.wait_live()
    back_at = time.monotonic()
    await running
    figures = await deploy.settle_and_record(
        stream,
        fault="API process (embedded jobs) SIGKILLed, restarted on the same port 2 s later",
        extra={"deliveries_in_progress_at_kill": busy, "requests_in_flight_at_kill": in_flight},
        recovered_at=back_at,
    )
    conclude("c-api-killed", deploy, figures, verdict(figures))


async def test_d_smtp_answers_451_for_30_s(deploy: Deployment) -> None:
    api = await deploy.start_api()
    stream = RegistrationStream([api.base_url], count=REGISTRATIONS, prefix="smtp451", rate=RATE)
    running = asyncio.create_task(stream.run())
    await stream.wait_answered(REGISTRATIONS // 6)
    deploy.sink.refuse_for(30)
    back_at = time.monotonic() + 30
    await running
    figures = await deploy.settle_and_record(
        stream,
        fault="SMTP server answered 451 to every message for 30 s (embedded jobs)",
        recovered_at=back_at,
    )
    problems = verdict(figures)
    if not deploy.sink.refused:
        problems.append("the SMTP server never had to refuse a message")
    conclude("d-smtp-451", deploy, figures, problems)


async def postgres_restart(tmp_path: Path, *, celery: bool) -> None:
    """PostgreSQL stopped for 5 s and started again mid-stream, on a cluster of its own (the
    scenario stops and starts it), at every default setting. Each mail must arrive within
    RECOVERY_GOAL_S of the database's return: no job may wait for a lease to run out or for
    the relay's republish sweep."""
    name = "g-postgres-restart-celery" if celery else "e-postgres-restart"
    backend = "Celery on Redis" if celery else "embedded jobs"
    with private_cluster() as cluster, deployment(name, tmp_path, cluster) as deploy:
        if celery:
            await deploy.start_redis()
        api = await deploy.start_api()
        if celery:
            await deploy.start_worker()
        deploy.sink.delay_s = PG_SMTP_DELAY_S
        stream = RegistrationStream(
            [api.base_url], count=PG_REGISTRATIONS, prefix="pgrestart", rate=RATE
        )
        running = asyncio.create_task(stream.run())
        await stream.wait_answered(PG_REGISTRATIONS // 3)
        await asyncio.to_thread(cluster.stop)
        down_since = time.monotonic()
        async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
            ready_while_down = (await client.get("/health/ready")).status_code
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - down_since)))
        await asyncio.to_thread(cluster.start)
        back_at = time.monotonic()
        await running
        figures = await deploy.settle_and_record(
            stream,
            fault=f"PostgreSQL stopped (pg_ctl -m fast) for 5 s and started again ({backend})",
            extra={
                "health_ready_while_down": ready_while_down,
                "database_down_seconds": round(back_at - down_since, 1),
            },
            recovered_at=back_at,
        )
        problems = verdict(figures)
        services = [*deploy.apis, *deploy.workers]
        if any(s.starts != 1 or not s.alive() for s in services):
            problems.append("a process did not survive the database restart")
        if not figures["answers_503"]:
            problems.append("no 503 while the database was down")
        if ready_while_down != 503:
            problems.append(
                f"/health/ready answered {ready_while_down} while the database was down"
            )
        slowest = figures["mail_delay_max_s"]
        if slowest is not None and slowest > RECOVERY_GOAL_S:
            problems.append(f"a mail arrived {slowest} s after the database was back")
        conclude(name, deploy, figures, problems)


async def test_e_postgres_restarted(tmp_path: Path) -> None:
    await postgres_restart(tmp_path, celery=False)


async def test_g_postgres_restarted_under_celery(tmp_path: Path) -> None:
    await postgres_restart(tmp_path, celery=True)


async def test_f_sigterm_under_load(deploy: Deployment) -> None:
    """A rolling restart: SIGTERM, the old process drains and exits, a new one takes the port.

    No request the old process accepted may fail: each attempt in flight at SIGTERM is
    answered, or never reached the application (its X-Request-ID is in no log line)."""
    deploy.settings |= {"SHUTDOWN_GRACE_SECONDS": "20", "JOB_SHUTDOWN_GRACE_SECONDS": "5"}
    api = await deploy.start_api()
    deploy.sink.delay_s = SMTP_DELAY_S
    # 32 clients back to back (no pacing), so that about 32 requests are in flight at SIGTERM.
    stream = RegistrationStream(
        [api.base_url], count=REGISTRATIONS, prefix="sigterm", rate=None, concurrency=32
    )
    running = asyncio.create_task(stream.run())
    await stream.wait_answered(FAULT_AFTER)
    in_flight = list(stream.in_flight.values())
    api.terminate()
    returncode = await asyncio.to_thread(api.wait)
    first_life = api.output()
    api.start()
    await api.wait_live()
    back_at = time.monotonic()
    await running

    attempts = [a for r in stream.registrations for a in r.attempts]
    in_flight_outcomes = [a.outcome for a in in_flight]
    seen_unanswered = [
        a.request_id for a in attempts if a.status is None and a.request_id in first_life
    ]
    figures = await deploy.settle_and_record(
        stream,
        fault="SIGTERM to the API under load, a new process started once it exited",
        extra={
            "requests_in_flight_at_sigterm": len(in_flight),
            "in_flight_outcomes": {o: in_flight_outcomes.count(o) for o in set(in_flight_outcomes)},
            "seen_but_unanswered": len(seen_unanswered),
            "exit_status": returncode,
        },
        recovered_at=back_at,
    )
    problems = verdict(figures)
    if returncode not in (0, -signal.SIGTERM):
        problems.append(f"the API exited with {returncode}")
    if "Application shutdown complete" not in first_life:
        problems.append("the API did not complete its shutdown")
    if "Traceback" in first_life:
        problems.append("the API logged a traceback while shutting down")
    if seen_unanswered:
        problems.append(f"{len(seen_unanswered)} request(s) reached the app and got no answer")
    if not in_flight:
        problems.append("no request was in flight at SIGTERM: the check proved nothing")
    failed = [a.outcome for a in in_flight if a.status is not None and a.status != 201]
    if failed:
        problems.append(f"requests in flight at SIGTERM answered {failed}")
    conclude("f-sigterm", deploy, figures, problems)
