"""The Celery backend end to end: API relay -> broker -> worker process -> SMTP -> job row."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.config import Settings
from app.db.models import Job, JobRun, JobStatus
from app.main import create_app
from app.worker import create_celery
from tests.conftest import PASSWORD, SmtpSink, empty_tables
from tests.integration.conftest import Worker
from tests.integration.proxy import TcpProxy
from tests.jobs import wait_for_job

# Celery workers share the database with the API: PostgreSQL, as at scale.
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def register(app: FastAPI, count: int, prefix: str) -> list[str]:
    transport = httpx.ASGITransport(app=app)
    emails = [f"{prefix}-{n}@example.com" for n in range(count)]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for address in emails:
            response = await client.post(
                "/api/v1/auth/register",
                json={"email": address, "name": "Celery", "password": PASSWORD},
            )
            assert response.status_code == 201, response.text
    return emails


async def all_jobs(app: FastAPI) -> list[Job]:
    async with app.state.db.transaction() as session:
        return list(await session.scalars(select(Job)))


async def test_registrations_deliver_their_emails_through_celery_workers(
    celery_app: FastAPI, worker: Worker, smtp: SmtpSink
) -> None:
    await worker.start()
    await worker.ready()
    emails = await register(celery_app, 6, "celery")
    messages = await smtp.wait_for(6)
    assert sorted(m["To"] for m in messages) == sorted(emails)
    for job in await all_jobs(celery_app):
        done = await wait_for_job(celery_app.state.db, job.id, JobStatus.SUCCEEDED)
        assert done.attempts == 1
    async with celery_app.state.db.transaction() as session:
        workers = set(await session.scalars(select(JobRun.worker)))
    assert all(name.startswith("celery:") for name in workers)


async def test_jobs_committed_while_no_worker_runs_are_delivered_when_one_starts(
    celery_app: FastAPI, worker: Worker, smtp: SmtpSink
) -> None:
    emails = await register(celery_app, 3, "waiting")
    await asyncio.sleep(0.5)
    assert smtp.messages == []
    await worker.start()
    messages = await smtp.wait_for(3)
    assert sorted(m["To"] for m in messages) == sorted(emails)


async def test_a_worker_killed_mid_job_does_not_lose_it(
    celery_app: FastAPI, worker: Worker, smtp: SmtpSink, celery_settings: Settings
) -> None:
    await worker.start()
    await worker.ready()
    smtp.stall = True  # the next delivery hangs inside the SMTP conversation
    [email] = await register(celery_app, 1, "killed")
    [job] = await all_jobs(celery_app)
    await wait_for_job(celery_app.state.db, job.id, JobStatus.RUNNING)
    await smtp.stalled.wait()
    worker.kill()
    smtp.release()  # the killed worker's half-sent mail is never accepted

    await worker.start()  # a fresh worker takes the job over once the dead one's lease runs out
    [message] = await smtp.wait_for(1)
    assert message["To"] == email
    done = await wait_for_job(celery_app.state.db, job.id, JobStatus.SUCCEEDED)
    assert done.attempts == 2
    await asyncio.sleep(celery_settings.job_lease_seconds)  # no second delivery follows
    assert len(smtp.messages) == 1


async def test_a_broker_that_is_down_at_commit_time_loses_nothing(
    settings: Settings, broker_url: str, worker: Worker, smtp: SmtpSink
) -> None:
    """The API reaches the broker through a proxy we cut; the worker reaches it directly."""
    proxy = await TcpProxy.to(broker_url)
    api_settings = settings.model_copy(
        update={"broker_url": proxy.url(broker_url), "job_poll_seconds": 0.2}
    )
    worker.settings = api_settings.model_copy(update={"broker_url": broker_url})
    await worker.start()
    app = await asyncio.to_thread(create_app, api_settings)  # building an app is sync work
    try:
        async with app.router.lifespan_context(app):
            await proxy.cut()
            emails = await register(app, 4, "outage")  # every request still succeeds
            await asyncio.sleep(1.0)
            assert smtp.messages == []
            async with app.state.db.transaction() as session:
                queued = await session.scalar(
                    select(func.count()).where(Job.status == JobStatus.QUEUED)
                )
            assert queued == 4
            await proxy.restore()
            messages = await smtp.wait_for(4)
            assert sorted(m["To"] for m in messages) == sorted(emails)
            await app.state.jobs.stop()
            await empty_tables(app)
    finally:
        await proxy.close()


async def test_a_message_the_broker_lost_is_published_again(
    celery_app: FastAPI, worker: Worker, smtp: SmtpSink, celery_settings: Settings
) -> None:
    """The job row outlives its message: purge the queue, and the relay's sweep republishes."""
    [email] = await register(celery_app, 1, "lost")
    [job] = await all_jobs(celery_app)
    async with asyncio.timeout(5):
        while (await all_jobs(celery_app))[0].published_at is None:
            await asyncio.sleep(0.05)
    # The relay commits published_at, then publishes: the message may not be there yet.
    purge = create_celery(celery_settings).control.purge
    purged = 0
    async with asyncio.timeout(5):
        while not purged:
            purged = await asyncio.to_thread(purge)
    assert purged == 1
    await worker.start()
    [message] = await smtp.wait_for(1)  # after JOB_REPUBLISH_SECONDS
    assert message["To"] == email
    done = await wait_for_job(celery_app.state.db, job.id, JobStatus.SUCCEEDED)
    assert done.attempts == 1
