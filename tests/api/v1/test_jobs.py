import logging
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.db.models import Job, JobStatus
from app.services import tasks
from tests.conftest import MakeUser, SmtpSink, bearer, login
from tests.jobs import wait_for_job


@pytest.fixture
async def admin(client: httpx.AsyncClient, make_user: MakeUser) -> dict[str, str]:
    await make_user(email="admin@example.com", is_superuser=True, is_verified=True)
    return bearer(await login(client, "admin@example.com"))


async def welcome_job(app: FastAPI, smtp: SmtpSink, client: httpx.AsyncClient) -> Job:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "jobs@example.com", "name": "J", "password": "long enough pw"},
    )
    assert response.status_code == 201
    async with app.state.db.transaction() as session:
        job = await session.scalar(
            select(Job)
            .where(Job.name == tasks.send_welcome_email.name, Job.payload.is_not(None))
            .order_by(Job.created_at.desc())
        )
    assert isinstance(job, Job)
    return job


async def test_superuser_lists_jobs_with_their_status(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI, smtp: SmtpSink
) -> None:
    job = await welcome_job(app, smtp, client)
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    response = await client.get("/api/v1/jobs", headers=admin)
    assert response.status_code == 200
    body = response.json()
    assert len(body["items"]) == 1
    assert body["next_cursor"] is None
    [item] = [item for item in body["items"] if item["id"] == str(job.id)]
    assert item["name"] == "send_welcome_email"
    assert item["status"] == "succeeded"
    assert set(item) == {
        "id", "name", "status", "attempts", "max_attempts", "last_error", "run_at",
        "created_at", "updated_at",
    }  # fmt: skip


async def test_jobs_filter_by_status(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI, smtp: SmtpSink
) -> None:
    job = await welcome_job(app, smtp, client)
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    dead = await client.get("/api/v1/jobs", params={"status": "dead"}, headers=admin)
    done = await client.get("/api/v1/jobs", params={"status": "succeeded"}, headers=admin)
    assert dead.json() == {"items": [], "next_cursor": None}
    assert str(job.id) in {item["id"] for item in done.json()["items"]}


async def test_jobs_reject_an_unknown_status(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get("/api/v1/jobs", params={"status": "exploded"}, headers=admin)
    assert response.status_code == 422


async def test_jobs_are_for_superusers_only(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user(email="plain@example.com")
    tokens = await login(client, "plain@example.com")
    assert (await client.get("/api/v1/jobs", headers=bearer(tokens))).status_code == 403
    assert (await client.get("/api/v1/jobs")).status_code == 401


async def test_read_job_and_unknown_job(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI, smtp: SmtpSink
) -> None:
    job = await welcome_job(app, smtp, client)
    found = await client.get(f"/api/v1/jobs/{job.id}", headers=admin)
    missing = await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=admin)
    assert found.status_code == 200
    assert found.json()["id"] == str(job.id)
    assert missing.status_code == 404


async def test_smtp_outage_kills_the_job_and_a_retry_delivers_it(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI, smtp: SmtpSink
) -> None:
    smtp.refuse_with = "451 4.3.0 Try again later"
    job = await welcome_job(app, smtp, client)
    dead = await wait_for_job(app.state.db, job.id, JobStatus.DEAD)
    assert dead.attempts == dead.max_attempts
    assert "451" in (dead.last_error or "")
    assert smtp.messages == []

    smtp.refuse_with = None
    retried = await client.post(f"/api/v1/jobs/{job.id}/retry", headers=admin)
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    [message] = await smtp.wait_for(1)
    assert message["To"] == "jobs@example.com"
    assert (await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)).attempts == 1


async def test_a_briefly_refusing_smtp_server_still_gets_the_mail(
    client: httpx.AsyncClient, app: FastAPI, smtp: SmtpSink
) -> None:
    smtp.refuse_with = "451 4.3.0 Try again later"
    job = await welcome_job(app, smtp, client)
    async with app.state.db.transaction() as session:
        while (await session.get(Job, job.id, populate_existing=True)).attempts < 2:
            await session.commit()
    smtp.refuse_with = None
    [message] = await smtp.wait_for(1)
    assert message["To"] == "jobs@example.com"
    assert len(smtp.messages) == 1


async def test_retrying_a_job_that_succeeded_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI, smtp: SmtpSink
) -> None:
    job = await welcome_job(app, smtp, client)
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    response = await client.post(f"/api/v1/jobs/{job.id}/retry", headers=admin)
    assert response.status_code == 409
    assert (
        await client.post(f"/api/v1/jobs/{uuid.uuid4()}/retry", headers=admin)
    ).status_code == 404


async def test_notification_is_accepted_and_logged_after_the_response(
    client: httpx.AsyncClient, make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    user = await make_user(email="note@example.com")
    tokens = await login(client, "note@example.com")
    with caplog.at_level(logging.INFO, logger="app.services.notifications"):
        response = await client.post(
            "/api/v1/notifications",
            json={"message": "hello there"},
            headers=bearer(tokens) | {"X-Request-ID": "note-1"},
        )
    assert response.status_code == 202
    [record] = [r for r in caplog.records if r.name == "app.services.notifications"]
    assert str(user.id) in record.getMessage()
    assert "hello there" in record.getMessage()
    assert "note-1" in record.getMessage()


async def test_notification_needs_a_user_and_a_message(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(email="empty@example.com")
    tokens = await login(client, "empty@example.com")
    assert (await client.post("/api/v1/notifications", json={"message": "x"})).status_code == 401
    blank = await client.post(
        "/api/v1/notifications", json={"message": "  "}, headers=bearer(tokens)
    )
    assert blank.status_code == 422


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    generated = await client.get("/health/live")
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    replaced = await client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert len(generated.headers["X-Request-ID"]) == 32
    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert replaced.headers["X-Request-ID"] != "bad id with spaces"
