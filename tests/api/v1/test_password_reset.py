from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core import security
from app.core.config import Settings
from app.db.models import Job, User
from app.services import tasks
from tests.conftest import PASSWORD, MakeUser, SmtpSink, bearer, login
from tests.mail import link_in, path_and_query, token_in

NEW_PASSWORD = "a brand new passphrase"
RESET_JOBS = Job.name == tasks.send_password_reset_email.name


async def forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/forgot-password", json={"email": email})


async def reset_token(client: httpx.AsyncClient, smtp: SmtpSink, email: str) -> str:
    assert (await forgot(client, email)).status_code == 202
    [message] = await smtp.wait_for(1)
    assert message["To"] == email
    return token_in(message)


async def test_forgot_password_mails_a_reset_link(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser, settings: Settings
) -> None:
    await make_user(email="reset@example.com", is_verified=True)
    response = await forgot(client, "RESET@example.com")
    assert response.status_code == 202
    [message] = await smtp.wait_for(1)
    assert message["Subject"] == "Reset your password"
    assert link_in(message).startswith(f"{settings.public_base_url}/reset-password?token=")


async def test_forgot_password_answers_the_same_for_an_unknown_email(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user(email="known@example.com", is_verified=True)
    known = await forgot(client, "known@example.com")
    unknown = await forgot(client, "unknown@example.com")
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    await smtp.wait_for(1)
    async with app.state.db.transaction() as session:
        resets = await session.scalar(select(func.count()).where(RESET_JOBS))
    assert resets == 1  # only the known account got a reset job


async def test_forgot_password_sends_nothing_to_a_deactivated_account(
    client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user(email="off@example.com", is_active=False, is_verified=True)
    assert (await forgot(client, "off@example.com")).status_code == 202
    async with app.state.db.transaction() as session:
        assert await session.scalar(select(func.count()).where(RESET_JOBS)) == 0


async def test_forgot_password_rejects_an_invalid_email(client: httpx.AsyncClient) -> None:
    assert (await forgot(client, "not-an-email")).status_code == 422


async def test_reset_password_sets_the_new_password_and_ends_every_session(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser
) -> None:
    await make_user(email="swap@example.com", is_verified=True)
    old_session = await login(client, "swap@example.com")
    token = await reset_token(client, smtp, "swap@example.com")

    response = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["email"] == "swap@example.com"

    assert (await client.get("/api/v1/users/me", headers=bearer(old_session))).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": old_session["refresh_token"]}
    )
    assert refreshed.status_code == 401
    old = await client.post(
        "/api/v1/auth/token", data={"username": "swap@example.com", "password": PASSWORD}
    )
    assert old.status_code == 401
    await login(client, "swap@example.com", NEW_PASSWORD)


async def test_a_reset_link_works_once(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser
) -> None:
    await make_user(email="once@example.com", is_verified=True)
    token = await reset_token(client, smtp, "once@example.com")
    first = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": NEW_PASSWORD}
    )
    again = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": "yet another one!"}
    )
    assert first.status_code == 200
    assert again.status_code == 400
    await login(client, "once@example.com", NEW_PASSWORD)


async def test_reset_rejects_an_expired_link(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user(is_verified=True)
    token = security.create_email_token(
        purpose=security.RESET_PASSWORD,
        user_id=user.id,
        bound_to=user.hashed_password,
        secret=settings.signing_key,
        ttl=timedelta(seconds=-1),
    )
    response = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 400


async def test_reset_rejects_a_verification_token(
    client: httpx.AsyncClient, smtp: SmtpSink
) -> None:
    await client.post(
        "/api/v1/auth/register",
        json={"email": "mixup@example.com", "name": "Mix", "password": PASSWORD},
    )
    verify_token = token_in((await smtp.wait_for(1))[0])
    response = await client.post(
        "/api/v1/auth/reset-password", json={"token": verify_token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 400


async def test_reset_rejects_a_short_password_and_keeps_the_link_usable(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser
) -> None:
    await make_user(email="short@example.com", is_verified=True)
    token = await reset_token(client, smtp, "short@example.com")
    short = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": "short"}
    )
    assert short.status_code == 422
    fine = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": NEW_PASSWORD}
    )
    assert fine.status_code == 200


async def test_reset_page_shows_a_form_and_sets_the_password(
    client: httpx.AsyncClient, smtp: SmtpSink, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user(email="page@example.com", is_verified=True)
    assert (await forgot(client, "page@example.com")).status_code == 202
    [message] = await smtp.wait_for(1)
    form = await client.get(path_and_query(link_in(message)))
    assert form.status_code == 200
    assert 'name="password"' in form.text
    assert form.headers["X-Frame-Options"] == "DENY"

    done = await client.post(
        "/reset-password", data={"token": token_in(message), "password": NEW_PASSWORD}
    )
    assert done.status_code == 200
    assert "new password is set" in done.text
    await login(client, "page@example.com", NEW_PASSWORD)


async def test_reset_page_rejects_a_short_password_with_the_form_again(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, app: FastAPI
) -> None:
    user = await make_user(is_verified=True)
    token = security.create_email_token(
        purpose=security.RESET_PASSWORD,
        user_id=user.id,
        bound_to=user.hashed_password,
        secret=settings.signing_key,
        ttl=timedelta(hours=1),
    )
    page = await client.post("/reset-password", data={"token": token, "password": "short"})
    assert page.status_code == 422
    assert 'name="password"' in page.text
    async with app.state.db.transaction() as session:
        stored = await session.get(User, user.id)
    assert stored is not None
    assert stored.hashed_password == user.hashed_password


async def test_reset_page_with_a_spent_link_explains_itself(client: httpx.AsyncClient) -> None:
    page = await client.post("/reset-password", data={"token": "spent", "password": NEW_PASSWORD})
    assert page.status_code == 400
    assert "Password not changed" in page.text


async def test_a_bad_or_spent_reset_link_costs_no_argon2_work(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Links are checked before hashing, so a stream of bad links cannot burn the CPU."""
    user = await make_user()
    hashed: list[str] = []

    async def counting_hash(password: str) -> str:
        hashed.append(password)
        return await real_hash(password)

    real_hash = security.hash_password
    monkeypatch.setattr(security, "hash_password", counting_hash)
    spent = security.create_email_token(
        purpose=security.RESET_PASSWORD,
        user_id=user.id,
        bound_to="a hash the user no longer has",
        secret=settings.signing_key,
        ttl=timedelta(minutes=5),
    )
    for token in ("not-a-token", spent):
        response = await client.post(
            "/api/v1/auth/reset-password", json={"token": token, "password": "brand new password"}
        )
        assert response.status_code == 400
    assert hashed == []
