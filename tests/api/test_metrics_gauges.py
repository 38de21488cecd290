"""The gauges the alerts read: the outbox backlog, recently dead jobs, jobs of a name no process
knew, readiness, the admission gate and the pool's size, as a scrape of /metrics shows them."""

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import BaseModel
from sqlalchemy import update

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.main import create_app
from app.middleware import AdmissionMiddleware
from app.services import job_registry, job_statements, job_stats
from app.services.job_registry import JobDefinition
from app.services.job_runner import JobRunner
from tests.api.test_operations import samples
from tests.conftest import make_settings
from tests.test_admission import HeldApp, _until


async def _jobs(app: FastAPI, *jobs: Job) -> None:
    await app.state.jobs.stop()  # the jobs stay as they are put
    async with app.state.db.transaction() as session:
        session.add_all(jobs)


def _job(status: JobStatus, **fields: object) -> Job:
    return Job(name=fields.pop("name", "noop"), payload={}, max_attempts=3, status=status, **fields)


async def test_the_outbox_backlog_counts_due_jobs_nothing_has_taken(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    now = utcnow()
    await _jobs(
        app,
        _job(JobStatus.QUEUED, run_at=now - timedelta(minutes=3)),
        _job(JobStatus.QUEUED, run_at=now - timedelta(seconds=5)),
        _job(JobStatus.FAILED, run_at=now - timedelta(seconds=1)),  # its retry is due
        # Due, but the relay has handed it to the broker: a worker's to take, not the outbox's.
        _job(JobStatus.QUEUED, run_at=now - timedelta(minutes=10), published_at=now),
        _job(JobStatus.QUEUED, run_at=now + timedelta(minutes=5)),  # not due yet
        _job(JobStatus.FAILED, run_at=now + timedelta(minutes=5)),  # its retry is not due yet
        _job(JobStatus.RUNNING, run_at=now - timedelta(hours=1)),
        _job(JobStatus.SUCCEEDED, run_at=now - timedelta(days=1)),
        _job(JobStatus.DEAD, run_at=now - timedelta(days=1)),
    )
    text = (await client.get("/metrics")).text
    assert samples(text, "jobs_outbox_backlog") == {(): 3}
    # The lag is the oldest due job's, published or not: it has not run either way.
    assert 600 <= samples(text, "jobs_due_lag_seconds")[()] < 600 + 60


async def test_recently_dead_counts_jobs_dead_within_the_hour_by_name(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    now = utcnow()
    await _jobs(
        app,
        _job(JobStatus.DEAD, name="send_welcome_email", run_at=now - timedelta(minutes=30)),
        _job(JobStatus.DEAD, name="send_welcome_email", run_at=now - timedelta(hours=3)),
        _job(JobStatus.DEAD, name="send_password_reset", run_at=now - timedelta(minutes=1)),
        # Dead for two hours: it has been alerted on.
        _job(
            JobStatus.DEAD,
            name="send_welcome_email",
            run_at=now - timedelta(hours=3),
            updated_at=now - timedelta(hours=2),
        ),
        # Retried by an operator: queued again, no longer dead.
        _job(JobStatus.QUEUED, name="send_welcome_email", run_at=now + timedelta(hours=1)),
        _job(JobStatus.FAILED, name="send_welcome_email", run_at=now + timedelta(hours=1)),
    )
    text = (await client.get("/metrics")).text
    assert samples(text, "jobs_recently_dead") == {
        (("job_name", "send_password_reset"),): 1,
        (("job_name", "send_welcome_email"),): 2,
    }


class Nothing(BaseModel):
    pass


async def _run_newer_code(payload: Nothing) -> None:
    pass


# A job of newer code, in no registry until the test adds it: as an older process meets it.
newer_job = JobDefinition("added_by_newer_code", _run_newer_code, Nothing, max_attempts=3)


async def _deliver(app: FastAPI, job: Job, worker: str) -> None:
    """The job, due now, delivered to a runner of this process's registry (as Celery does)."""
    async with app.state.db.transaction() as session:
        await session.execute(update(Job).where(Job.id == job.id).values(run_at=utcnow()))
    runner = JobRunner(app.state.db, app.state.settings)
    try:
        assert await runner.run_one(job.id, worker=worker)
    finally:
        await runner.close()


async def _scrape_now(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setattr(app.state.job_stats, "max_age", 0)  # not the figures of a scrape ago
    return (await client.get("/metrics")).text


async def test_jobs_of_a_name_no_process_knows_are_counted_until_one_runs_them(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They go back to the queue, never dead, due later each time: only this gauge shows them."""
    unknown = _job(JobStatus.QUEUED, name=newer_job.name)
    await _jobs(
        app,
        unknown,
        # Retried by an operator: queued again, with the error it died of.
        _job(JobStatus.QUEUED, name="send_welcome_email", last_error="SMTPDataError: 554"),
        # A known job's own error, which only mentions the word.
        _job(JobStatus.FAILED, name="noop", last_error="UnknownJob: raised by the job itself"),
    )
    assert samples(await _scrape_now(client, app, monkeypatch), "jobs_unknown_name") == {}
    await _deliver(app, unknown, "older")
    text = await _scrape_now(client, app, monkeypatch)
    assert samples(text, "jobs_unknown_name") == {(("job_name", newer_job.name),): 1}
    assert samples(text, "jobs_recently_dead") == {}
    monkeypatch.setitem(job_registry.registry.definitions, newer_job.name, newer_job)
    await _deliver(app, unknown, "newer")
    async with app.state.db.transaction() as session:
        done = await session.get(Job, unknown.id)
        assert done is not None
        # It ran; its last_error still says what the older process found.
        assert done.status == JobStatus.SUCCEEDED
        assert (done.last_error or "").startswith(job_statements.UNKNOWN_NAME_ERROR)
    assert samples(await _scrape_now(client, app, monkeypatch), "jobs_unknown_name") == {}


async def test_unknown_job_names_past_the_few_shown_are_summed_as_other(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever names producers write, the gauge has a bounded number of series."""
    monkeypatch.setattr(job_stats, "UNKNOWN_NAMES_SHOWN", 2)
    error = f"{job_statements.UNKNOWN_NAME_ERROR} no job named it here"
    later = utcnow() + timedelta(minutes=5)
    counts = {"most": 3, "many": 2, "few_a": 1, "few_b": 1}
    await _jobs(
        app,
        *(
            _job(JobStatus.QUEUED, name=name, last_error=error, run_at=later)
            for name, count in counts.items()
            for _ in range(count)
        ),
    )
    assert samples(await _scrape_now(client, app, monkeypatch), "jobs_unknown_name") == {
        (("job_name", "most"),): 3,
        (("job_name", "many"),): 2,
        (("job_name", job_stats.OTHER),): 2,
    }


async def test_readiness_checks_are_gauges(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    assert samples(text, "readiness_check_ok") == {
        (("check", "database"),): 1,
        (("check", "migrations"),): 1,
    }


async def _scrape(settings: Settings) -> httpx.Response:
    app = await asyncio.to_thread(create_app, settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/metrics")
    finally:
        await app.state.db.dispose()


async def test_metrics_answer_without_the_job_gauges_when_the_jobs_cannot_be_read(
    tmp_path: Path,
) -> None:
    fresh = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}")
    response = await _scrape(fresh)
    assert response.status_code == 200
    assert samples(response.text, "readiness_check_ok") == {
        (("check", "database"),): 1,
        (("check", "migrations"),): 0,
    }
    assert samples(response.text, "jobs") == {}
    assert "http_requests_total" in response.text


async def test_metrics_answer_while_the_database_is_down() -> None:
    down = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere", db_pool_timeout=1)
    response = await _scrape(down)
    assert response.status_code == 200
    assert samples(response.text, "readiness_check_ok")[(("check", "database"),)] == 0
    assert samples(response.text, "jobs_due_lag_seconds") == {}


async def test_the_pool_limit_is_its_size_plus_overflow(settings: Settings) -> None:
    sized = settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 4})
    text = (await _scrape(sized)).text
    assert samples(text, "db_pool_connections_limit") == {(): 7}
    assert samples(text, "admission_requests_limit") == {(): 7}


def _gate(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_the_admission_gauges_count_admitted_waiting_and_turned_away_requests() -> None:
    held = HeldApp()
    gate = AdmissionMiddleware(held, limit=1, timeout=0.3)
    assert _gate("admission_requests_limit") == 1
    before = {
        name: _gate(name)
        for name in (
            "admission_requests_in_flight",
            "admission_requests_waiting",
            "admission_rejected_requests_total",
        )
    }

    def delta(name: str) -> float:
        return _gate(name) - before[name]

    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = asyncio.create_task(client.get("/first"))
        await _until(lambda: held.started == ["/first"])
        second = asyncio.create_task(client.get("/second"))
        await _until(lambda: delta("admission_requests_waiting") == 1)
        assert delta("admission_requests_in_flight") == 1
        refused = await second  # no slot within the timeout
        assert refused.status_code == 503
        assert delta("admission_requests_waiting") == 0
        assert delta("admission_rejected_requests_total") == 1
        held.release.set()
        assert (await first).status_code == 200
    assert delta("admission_requests_in_flight") == 0
