"""Health and metrics, as an operator's probes and scrapers see them."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.main import create_app
from tests.conftest import PASSWORD, MakeUser, SmtpSink, bearer, login, make_settings
from tests.jobs import wait_for_job


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named `name` in a scrape, by their labels. Only their lines are parsed: the
    whole scrape of a test process that has served a thousand apps takes the parser 100 ms."""
    lines = [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    found = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_live_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_part(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok"}}


async def _client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = await asyncio.to_thread(create_app, settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await app.state.db.dispose()


async def test_ready_names_missing_migrations(tmp_path: Path) -> None:
    fresh = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    async for client in _client_for(fresh):
        response = await client.get("/health/ready")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["migrations"].startswith("failed: at none")


async def test_ready_names_an_unreachable_broker(settings: Settings) -> None:
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    async for client in _client_for(broken):
        response = await client.get("/health/ready")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["broker"].startswith("failed")


async def test_metrics_count_requests_by_route_template_and_status(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(email="metrics@example.com")
    tokens = await login(client, "metrics@example.com")
    before = samples((await client.get("/metrics")).text, "http_requests_total")
    await client.get(f"/api/v1/users/{user.id}", headers=bearer(tokens))
    await client.get("/no/such/page")
    text = (await client.get("/metrics")).text
    after = samples(text, "http_requests_total")
    key = (("method", "GET"), ("route", "/api/v1/users/{user_id}"), ("status", "200"))
    assert after[key] - before.get(key, 0) == 1
    unmatched = (("method", "GET"), ("route", "<unmatched>"), ("status", "404"))
    assert after[unmatched] - before.get(unmatched, 0) == 1
    assert not any(str(user.id) in dict(labels)["route"] for labels in after)
    assert samples(text, "http_request_duration_seconds_count")


async def test_metrics_show_unfinished_jobs_and_job_run_times(
    client: httpx.AsyncClient, app: FastAPI, smtp: SmtpSink
) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "counted@example.com", "name": "C", "password": PASSWORD},
    )
    assert response.status_code == 201
    async with app.state.db.transaction() as session:
        job = await session.scalar(select(Job))
    assert job is not None
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    text = (await client.get("/metrics")).text
    jobs = samples(text, "jobs")
    # Finished jobs are history, not gauges: counting them would scan it on every scrape.
    assert jobs == {(("status", s),): 0 for s in ("queued", "running", "failed")}
    assert samples(text, "jobs_due_lag_seconds") == {(): 0}
    runs = samples(text, "job_run_duration_seconds_count")
    assert runs[(("job_name", "send_welcome_email"), ("outcome", "succeeded"))] >= 1


async def test_metrics_show_the_pool_in_use(client: httpx.AsyncClient, app: FastAPI) -> None:
    await app.state.jobs.stop()  # no background claims between the two scrapes
    async with app.state.db.engine.connect():
        held = samples((await client.get("/metrics")).text, "db_pool_connections_in_use")
    released = samples((await client.get("/metrics")).text, "db_pool_connections_in_use")
    assert held[()] - released[()] == 1


async def test_metrics_can_be_switched_off(settings: Settings) -> None:
    async for client in _client_for(settings.model_copy(update={"metrics_enabled": False})):
        assert (await client.get("/metrics")).status_code == 404


@pytest.mark.parametrize("path", ["/health/live", "/metrics", "/docs"])
async def test_operations_endpoints_answer(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_cors_allows_only_the_configured_origins(settings: Settings) -> None:
    configured = settings.model_copy(update={"cors_origins": ["https://app.example.com"]})
    async for client in _client_for(configured):
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = await client.options(
            "/api/v1/auth/token", headers=preflight | {"Origin": "https://app.example.com"}
        )
        other = await client.options(
            "/api/v1/auth/token", headers=preflight | {"Origin": "https://evil.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "access-control-allow-origin" not in other.headers


async def test_untrusted_host_headers_are_refused(settings: Settings) -> None:
    configured = settings.model_copy(update={"trusted_hosts": ["api.example.com"]})
    async for client in _client_for(configured):
        refused = await client.get("/health/live")  # Host: testserver
        accepted = await client.get("/health/live", headers={"Host": "api.example.com"})
        assert (refused.status_code, accepted.status_code) == (400, 200)


def test_origins_and_hosts_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TRUSTED_HOSTS", "api.example.com,*.internal")
    loaded = Settings(_env_file=None)
    assert loaded.cors_origins == ["https://a.example", "https://b.example"]
    assert loaded.trusted_hosts == ["api.example.com", "*.internal"]
