import uuid
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.core import security
from app.core.config import Settings
from app.db.models import Job, JobStatus, User
from app.services import jobs, tasks
from tests.conftest import PASSWORD, MakeUser, SmtpSink
from tests.jobs import wait_for_job
from tests.mail import link_in, path_and_query, text_body, token_in


async def register(client: httpx.AsyncClient, email: str, **headers: str) -> httpx.Response:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "name": "Grace", "password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response


async def test_registration_sends_a_welcome_email_with_a_verification_link(
    client: httpx.AsyncClient, smtp: SmtpSink, settings: Settings
) -> None:
    await register(client, "grace@example.com")
    [message] = await smtp.wait_for(1)
    assert message["To"] == "grace@example.com"
    assert "Welcome" in message["Subject"]
    assert link_in(message).startswith(f"{settings.public_base_url}/verify-email?token=")
    assert "Grace" in text_body(message)
    assert message.get_body(preferencelist=("html",)) is not None


async def test_welcome_email_carries_the_job_id_and_request_id(
    client: httpx.AsyncClient, smtp: SmtpSink, app: FastAPI
) -> None:
    response = await register(client, "ids@example.com", **{"X-Request-ID": "req-welcome-1"})
    assert response.headers["X-Request-ID"] == "req-welcome-1"
    [message] = await smtp.wait_for(1)
    async with app.state.db.transaction() as session:
        job = await session.scalar(select(Job))
    assert job is not None
    assert job.request_id == "req-welcome-1"
    assert message["Message-ID"].startswith(f"<{job.id}@")
    assert message["X-Request-ID"] == "req-welcome-1"


async def test_verification_link_page_confirms_the_address(
    client: httpx.AsyncClient, smtp: SmtpSink, app: FastAPI
) -> None:
    await register(client, "page@example.com")
    [message] = await smtp.wait_for(1)
    page = await client.get(path_and_query(link_in(message)))
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "page@example.com is confirmed" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    async with app.state.db.transaction() as session:
        user = await session.scalar(select(User).where(User.email == "page@example.com"))
    assert user is not None
    assert user.is_verified


async def test_verify_endpoint_marks_the_user_verified(
    client: httpx.AsyncClient, smtp: SmtpSink
) -> None:
    await register(client, "api@example.com")
    [message] = await smtp.wait_for(1)
    response = await client.post("/api/v1/auth/verify", json={"token": token_in(message)})
    assert response.status_code == 200
    assert response.json()["is_verified"] is True


async def test_verifying_twice_is_harmless(client: httpx.AsyncClient, smtp: SmtpSink) -> None:
    await register(client, "twice@example.com")
    token = token_in((await smtp.wait_for(1))[0])
    for _ in range(2):
        response = await client.post("/api/v1/auth/verify", json={"token": token})
        assert response.status_code == 200


async def test_verify_rejects_a_garbage_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/verify", json={"token": "not-a-token"})
    assert response.status_code == 400
    assert "invalid" in response.json()["detail"]


async def test_verify_rejects_an_expired_token(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    token = _verify_token(user, settings, ttl_s=-1)
    response = await client.post("/api/v1/auth/verify", json={"token": token})
    assert response.status_code == 400


async def test_verify_rejects_a_password_reset_token(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    token = security.create_email_token(
        purpose=security.RESET_PASSWORD,
        user_id=user.id,
        bound_to=user.hashed_password,
        secret=settings.signing_key,
        ttl=timedelta(hours=1),
    )
    response = await client.post("/api/v1/auth/verify", json={"token": token})
    assert response.status_code == 400


async def test_verify_rejects_a_token_for_an_unknown_user(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    ghost = User(id=uuid.uuid4(), email="ghost@example.com")
    response = await client.post(
        "/api/v1/auth/verify", json={"token": _verify_token(ghost, settings)}
    )
    assert response.status_code == 400


async def test_verify_page_with_a_bad_token_explains_itself(client: httpx.AsyncClient) -> None:
    page = await client.get("/verify-email?token=nonsense")
    assert page.status_code == 400
    assert "invalid" in page.text


async def test_welcome_job_for_a_verified_user_sends_nothing(
    client: httpx.AsyncClient, smtp: SmtpSink, app: FastAPI, make_user: MakeUser
) -> None:
    """A job reloads its user: one verified meanwhile (or deleted) gets no welcome email."""
    user = await make_user(email="already@example.com", is_verified=True)
    async with app.state.db.transaction() as session:
        job = await jobs.enqueue(session, tasks.send_welcome_email, tasks.UserMail(user_id=user.id))
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    assert smtp.messages == []


def _verify_token(user: User, settings: Settings, ttl_s: int = 3600) -> str:
    return security.create_email_token(
        purpose=security.VERIFY_EMAIL,
        user_id=user.id,
        bound_to=user.email,
        secret=settings.signing_key,
        ttl=timedelta(seconds=ttl_s),
    )
