"""A Celery worker that loses the database: its deliveries wait for it, none for the relay.

The worker reaches PostgreSQL through a proxy the test cuts and restores; the API (and its
relay) reaches it directly. Every setting that decides when a job would run again otherwise
is at its default: JOB_REPUBLISH_SECONDS (300) and JOB_LEASE_SECONDS (60) are both far
beyond how long a mail is waited for here (MAIL_WAIT_S).
"""

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import JobRun, JobStatus
from app.main import create_app
from tests.conftest import MAIL_WAIT_S, SmtpSink, empty_tables
from tests.integration.conftest import Worker
from tests.integration.proxy import TcpProxy
from tests.integration.test_celery import all_jobs, register
from tests.jobs import wait_for_job

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    """A cuttable way to the test database, for the worker."""
    way = await TcpProxy.to(settings.database_url)
    yield way
    await way.close()


@pytest.fixture
async def api(settings: Settings, broker_url: str, smtp: SmtpSink) -> AsyncIterator[FastAPI]:
    """The API in Celery mode at the default lease and republish settings."""
    api_settings = settings.model_copy(update={"broker_url": broker_url, "job_poll_seconds": 0.2})
    defaults = Settings.model_fields
    assert api_settings.job_republish_seconds == defaults["job_republish_seconds"].default
    assert api_settings.job_lease_seconds == defaults["job_lease_seconds"].default
    app = await asyncio.to_thread(create_app, api_settings)
    async with app.router.lifespan_context(app):
        yield app
        await app.state.jobs.stop()
        await empty_tables(app)


def behind(proxy: TcpProxy, worker: Worker, api: FastAPI) -> None:
    """The worker runs with the API's settings, reaching the database through `proxy`."""
    settings: Settings = api.state.settings
    worker.settings = settings.model_copy(update={"database_url": proxy.url(settings.database_url)})


async def test_deliveries_that_meet_an_unavailable_database_run_once_it_is_back(
    api: FastAPI, worker: Worker, proxy: TcpProxy, smtp: SmtpSink
) -> None:
    assert api.state.settings.job_republish_seconds > MAIL_WAIT_S
    behind(proxy, worker, api)
    await proxy.cut()
    await worker.start()
    await worker.ready()
    emails = await register(api, 3, "outage")
    await asyncio.sleep(2.0)  # each delivery meets the closed database within milliseconds
    assert smtp.messages == []
    await proxy.restore()
    messages = await smtp.wait_for(3)  # not after JOB_REPUBLISH_SECONDS
    assert sorted(m["To"] for m in messages) == sorted(emails)
    for job in await all_jobs(api):
        done = await wait_for_job(api.state.db, job.id, JobStatus.SUCCEEDED)
        assert done.attempts == 1  # a delivery that could not claim costs no attempt


async def test_an_outcome_the_database_could_not_take_is_recorded_once_it_is_back(
    api: FastAPI, worker: Worker, proxy: TcpProxy, smtp: SmtpSink
) -> None:
    """The database goes away while the job runs: its outcome (a 451 from the SMTP server) is
    recorded when it returns, and the job's retry follows, instead of the job sitting
    `running` until its lease runs out."""
    behind(proxy, worker, api)
    await worker.start()
    await worker.ready()
    smtp.stall = True
    [email] = await register(api, 1, "midjob")
    await smtp.stalled.wait()
    await proxy.cut()  # the worker's connection, idle while the job runs, is gone
    smtp.release()  # the first attempt fails with a 451, on a connection that is gone
    await asyncio.sleep(1.0)
    await proxy.restore()
    [message] = await smtp.wait_for(1)
    assert message["To"] == email
    [job] = await all_jobs(api)
    done = await wait_for_job(api.state.db, job.id, JobStatus.SUCCEEDED)
    assert done.attempts == 2
    async with api.state.db.transaction() as session:
        runs = await session.scalars(select(JobRun).order_by(JobRun.attempt))
        assert [run.outcome for run in runs] == ["failed", "succeeded"]
