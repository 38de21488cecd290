"""/metrics and /health/ready as strangers reach them: nothing to read without the token, no
series to add with made-up paths (10,000 of them: tests/test_hostile_traffic.py), and no
database work to make by asking often."""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import Database
from app.main import create_app
from app.services import health, job_stats
from tests.api.test_operations import samples
from tests.loop_guard import LoopGuard

TOKEN = "scrape-" + "t" * 40


async def _serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = await asyncio.to_thread(create_app, settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await app.state.db.dispose()


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements the engine sends while the block runs."""
    sent: list[str] = []

    def record(*args: object) -> None:
        sent.append(str(args[2]))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def test_metrics_with_a_token_refuse_scrapes_without_it(settings: Settings) -> None:
    async for client in _serving(settings.model_copy(update={"metrics_token": TOKEN})):
        anonymous = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        basic = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        scraper = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert [r.status_code for r in (anonymous, wrong, basic)] == [401, 401, 401]
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert "http_requests_total" not in anonymous.text
    assert scraper.status_code == 200
    assert "http_requests_total" in scraper.text


async def test_metrics_are_off_in_production_without_a_token(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    production = settings.model_copy(update={"environment": "production"})
    with caplog.at_level(logging.WARNING, logger="app.main"):
        async for client in _serving(production):
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/health/live")).status_code == 200
    warnings = [r for r in caplog.records if r.name == "app.main" and "METRICS_TOKEN" in r.message]
    assert len(warnings) == 1
    with_token = production.model_copy(update={"metrics_token": TOKEN})
    async for client in _serving(with_token):
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200


async def test_an_empty_path_parameter_under_the_admin_is_counted(
    client: httpx.AsyncClient,
) -> None:
    """It used to raise inside the metrics middleware."""
    response = await client.get("/admin/user/edit/")
    assert response.status_code < 500
    text = (await client.get("/metrics")).text
    routes = {dict(labels)["route"] for labels in samples(text, "http_requests_total")}
    assert "/admin/user/edit/" not in routes


class _ManySeries(Collector):
    """As many series as a long-lived process's registry may come to hold."""

    def describe(self) -> Iterator[Metric]:  # registering asks for the names only
        yield GaugeMetricFamily("test_many_series", "Many series.", labels=["n"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("test_many_series", "Many series.", labels=["n"])
        for n in range(50_000):
            family.add_metric([str(n)], n)
        yield family


async def test_a_scrape_of_a_large_registry_leaves_the_loop_free(
    client: httpx.AsyncClient, loop_guard: LoopGuard
) -> None:
    many = _ManySeries()
    REGISTRY.register(many)
    try:
        response = await client.get("/metrics")
    finally:
        REGISTRY.unregister(many)
    assert response.status_code == 200
    assert 'test_many_series{n="49999"} 49999.0' in response.text
    await asyncio.sleep(0)  # ends the step that served the scrape, so the guard has timed it
    assert loop_guard.take_reports() == []


async def test_concurrent_scrapes_share_one_read_of_the_job_gauges(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await app.state.jobs.stop()  # nothing else queries meanwhile
    with statements(app.state.db) as sent:
        scrapes = await asyncio.gather(*(client.get("/metrics") for _ in range(50)))
        again = await client.get("/metrics")
    assert {r.status_code for r in [*scrapes, again]} == {200}
    reads = [statement for statement in sent if "FROM jobs" in statement]
    # Once: each gauge statement (the unfinished counts, the due jobs, the recently dead, the
    # unknown names) a single time for all 51 scrapes.
    assert len(reads) == len(job_stats.statements(utcnow())) == 4, sent
    assert not any("succeeded" in statement for statement in reads)


async def test_job_gauges_count_unfinished_jobs_and_the_lag_of_the_oldest_due(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await app.state.jobs.stop()  # the jobs stay as they are put
    now = utcnow()
    async with app.state.db.transaction() as session:
        for status, due in [
            (JobStatus.QUEUED, now - timedelta(seconds=90)),
            (JobStatus.QUEUED, now - timedelta(seconds=30)),
            (JobStatus.FAILED, now + timedelta(hours=1)),
            (JobStatus.RUNNING, now - timedelta(hours=5)),  # running: not waiting
            (JobStatus.SUCCEEDED, now - timedelta(days=3)),
            (JobStatus.DEAD, now - timedelta(days=3)),
        ]:
            session.add(Job(name="noop", payload={}, max_attempts=1, status=status, run_at=due))
    text = (await client.get("/metrics")).text
    jobs = samples(text, "jobs")
    assert jobs == {
        (("status", "queued"),): 2,
        (("status", "running"),): 1,
        (("status", "failed"),): 1,
    }
    lag = samples(text, "jobs_due_lag_seconds")[()]
    assert 90 <= lag < 90 + 60


async def test_concurrent_readiness_probes_share_one_check(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    await app.state.jobs.stop()
    with statements(app.state.db) as one_check:
        await health.check_readiness(app.state.db, settings, head=app.state.head_revision)
    with statements(app.state.db) as sent:
        probes = await asyncio.gather(*(client.get("/health/ready") for _ in range(50)))
    assert {r.status_code for r in probes} == {200}
    assert len(sent) == len(one_check) > 0
