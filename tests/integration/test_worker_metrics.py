"""`python -m app worker` serves its jobs' metrics on WORKER_METRICS_PORT, as /metrics does.

The jobs run in the worker's prefork pool, in child processes: their samples reach the scrape
only through the multiprocess directory the worker's main process set before it forked.
"""

import socket
import ssl

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.db.models import Job, JobStatus
from tests.conftest import PASSWORD, SmtpSink
from tests.integration.conftest import Worker
from tests.jobs import wait_for_job

pytestmark = [
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
    # What the worker serves does not depend on its broker: one is enough.
    pytest.mark.parametrize("broker_url", ["redis"], indirect=True),
]

TOKEN = "worker-scrape-token"
# Made once: a client building its own TLS context loads the CA bundle, 100 ms with the loop held.
TLS = ssl.create_default_context()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> int:
    """The worker's metrics port, handed to it through the environment it copies."""
    port = free_port()
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return port


async def scrape(port: int, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(timeout=5, verify=TLS) as client:
        return await client.get(f"http://127.0.0.1:{port}/metrics", headers=headers)


async def register(app: FastAPI) -> Job:
    """A registration, and the welcome email job it enqueued."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "metrics@example.com", "name": "Metrics", "password": PASSWORD},
        )
    assert response.status_code == 201, response.text
    async with app.state.db.transaction() as session:
        job: Job = (await session.scalars(select(Job))).one()
    return job


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_a_job_run_in_a_pool_process_is_counted_in_the_workers_scrape(
    celery_app: FastAPI, worker: Worker, smtp: SmtpSink, port: int
) -> None:
    await worker.start()
    await worker.ready()
    job = await register(celery_app)
    await wait_for_job(celery_app.state.db, job.id, JobStatus.SUCCEEDED)

    response = await scrape(port)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    labels = {"job_name": job.name, "outcome": "succeeded"}
    assert sample(response.text, "job_run_duration_seconds_count", labels) == 1
    # The worker reports its jobs only: not the database gauges (the API's), nor an admission
    # gate or pool it does not have.
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert families == {"job_run_duration_seconds"}


async def test_with_metrics_token_set_a_scrape_needs_it(
    worker: Worker, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    await worker.start()
    await worker.ready()

    refused = await scrape(port)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "job_run_duration_seconds" not in refused.text
    assert (await scrape(port, "not-the-token")).status_code == 401
    answered = await scrape(port, TOKEN)
    assert answered.status_code == 200
    assert answered.headers["content-type"].startswith("text/plain")


async def test_in_production_without_metrics_token_the_port_stays_closed(
    worker: Worker, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    await worker.start()
    await worker.ready()  # the worker runs, it only serves no metrics

    with pytest.raises(httpx.ConnectError):
        await scrape(port)
    log = worker.log.read_text()
    assert log.count("METRICS_TOKEN is not set: the worker serves no metrics in production") == 1
