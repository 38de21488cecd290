"""The admin UI over HTTP: who gets in, what the pages show, what the actions do."""

import uuid
from typing import TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.db.models import Job, JobStatus, User
from tests.conftest import PASSWORD, MakeUser, bearer, login
from tests.e2e.admin import admin_login, make_job
from tests.jobs import wait_for_job


@pytest.fixture
async def superuser(make_user: MakeUser) -> User:
    return await make_user(email="root@example.com", is_superuser=True, is_verified=True)


@pytest.fixture
async def admin(client: httpx.AsyncClient, superuser: User) -> httpx.AsyncClient:
    """The client, logged in to the admin as a superuser."""
    response = await admin_login(client, superuser.email)
    assert response.status_code == 302, response.text
    return client


Row = TypeVar("Row", User, Job)


async def load(app: FastAPI, model: type[Row], id_: uuid.UUID) -> Row:
    async with app.state.db.transaction() as session:
        row: Row | None = await session.get(model, id_)
    assert row is not None
    return row


async def update(app: FastAPI, user_id: uuid.UUID, **fields: bool) -> None:
    async with app.state.db.transaction() as session:
        user = await session.get(User, user_id)
        assert user is not None
        for field, value in fields.items():
            setattr(user, field, value)


async def test_admin_redirects_to_the_login_page_when_not_logged_in(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/admin/", "/admin/user/list", "/admin/job/action/retry?pks="):
        response = await client.get(path)
        assert response.status_code == 302, path
        assert response.headers["location"] == "http://testserver/admin/login"


async def test_admin_refuses_a_normal_user(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user(email="plain@example.com")
    response = await admin_login(client, user.email)
    assert response.status_code == 400
    assert "Invalid credentials" in response.text
    assert "admin_session" not in client.cookies
    assert (await client.get("/admin/user/list")).status_code == 302


async def test_admin_refuses_a_wrong_password_and_an_inactive_superuser(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(email="root@example.com", is_superuser=True)
    await make_user(email="gone@example.com", is_superuser=True, is_active=False)
    assert (await admin_login(client, "root@example.com", "wrong password")).status_code == 400
    assert (await admin_login(client, "gone@example.com")).status_code == 400
    assert (await admin_login(client, "nobody@example.com")).status_code == 400


async def test_superuser_logs_in_and_sees_the_users_list(
    client: httpx.AsyncClient, superuser: User, make_user: MakeUser
) -> None:
    await make_user(email="alice@example.com", name="Alice Liddell")
    response = await admin_login(client, "ROOT@example.com", PASSWORD)  # any case, as the API
    assert response.status_code == 302
    assert response.headers["location"] == "http://testserver/admin/"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/admin" in cookie
    page = await client.get("/admin/user/list")
    assert page.status_code == 200
    assert "alice@example.com" in page.text
    assert "Alice Liddell" in page.text
    assert superuser.email in page.text


async def test_search_finds_a_user_by_email(admin: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user(email="alice@example.com")
    await make_user(email="bob@example.com")
    page = await admin.get("/admin/user/list", params={"search": "ALICE@exam"})
    assert page.status_code == 200
    assert "alice@example.com" in page.text
    assert "bob@example.com" not in page.text


async def test_deactivate_ends_every_session_of_the_user(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user(email="leaving@example.com")
    tokens = await login(admin, user.email)
    response = await admin.get("/admin/user/action/deactivate", params={"pks": str(user.id)})
    assert response.status_code == 302
    assert response.headers["location"] == "http://testserver/admin/user/list"
    page = await admin.get(response.headers["location"])
    assert "Deactivated 1 user; their sessions are ended." in page.text
    stored = await load(app, User, user.id)
    assert not stored.is_active
    refreshed = await admin.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401
    assert (await admin.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 401


async def test_activate_and_mark_verified_change_the_selected_users(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    first = await make_user(is_active=False)
    second = await make_user(is_active=False)
    untouched = await make_user(is_active=False)
    pks = f"{first.id},{second.id}"
    for action in ("activate", "mark-verified"):
        response = await admin.get(f"/admin/user/action/{action}", params={"pks": pks})
        assert response.status_code == 302
    for user in (first, second):
        stored = await load(app, User, user.id)
        assert stored.is_active
        assert stored.is_verified
    stored = await load(app, User, untouched.id)
    assert not stored.is_active
    assert not stored.is_verified


async def test_an_admin_cannot_deactivate_themselves(
    admin: httpx.AsyncClient, app: FastAPI, superuser: User
) -> None:
    response = await admin.get("/admin/user/action/deactivate", params={"pks": str(superuser.id)})
    page = await admin.get(response.headers["location"])
    assert "You cannot deactivate your own account." in page.text
    stored = await load(app, User, superuser.id)
    assert stored.is_active


async def test_an_action_with_a_malformed_selection_answers_400(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.get("/admin/user/action/deactivate", params={"pks": "not-an-id"})
    assert response.status_code == 400
    assert "Invalid selection" in response.text


async def test_retry_requeues_a_dead_job(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    job = await make_job(app, user=await make_user(), status=JobStatus.DEAD)
    response = await admin.get("/admin/job/action/retry", params={"pks": str(job.id)})
    assert response.status_code == 302
    page = await admin.get(response.headers["location"])
    assert "Queued 1 job to run again." in page.text
    # Requeued with a fresh set of attempts, and picked up by the dispatcher.
    done = await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
    assert done.attempts == 1


async def test_retry_reports_jobs_that_cannot_be_retried(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    await app.state.jobs.stop()  # keep the queued job queued
    queued = await make_job(app, user=user, status=JobStatus.QUEUED)
    dead = await make_job(app, user=user, status=JobStatus.DEAD)
    response = await admin.get(
        "/admin/job/action/retry", params={"pks": f"{queued.id},{dead.id},{uuid.uuid4()}"}
    )
    page = await admin.get(response.headers["location"])
    assert "Queued 1 job to run again." in page.text
    assert "Not retried: 2 jobs; only failed or dead jobs can be." in page.text
    stored = await load(app, Job, dead.id)
    assert (stored.status, stored.attempts) == (JobStatus.QUEUED, 0)


async def test_jobs_list_filters_by_status(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    await app.state.jobs.stop()
    dead = await make_job(app, user=user, status=JobStatus.DEAD)
    await make_job(app, user=user, status=JobStatus.SUCCEEDED)
    page = await admin.get("/admin/job/list", params={"status": "dead"})
    assert page.status_code == 200
    assert str(dead.id) in page.text
    async with app.state.db.transaction() as session:
        others = list(await session.scalars(select(Job).where(Job.id != dead.id)))
    assert len(others) == 1  # the succeeded job made above
    for job in others:
        assert str(job.id) not in page.text


async def test_a_password_change_logs_the_admin_out(
    admin: httpx.AsyncClient, superuser: User
) -> None:
    tokens = await login(admin, superuser.email)
    changed = await admin.patch(
        "/api/v1/users/me",
        json={"password": "a brand new password", "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert changed.status_code == 200
    response = await admin.get("/admin/user/list")
    assert response.status_code == 302
    assert response.headers["location"] == "http://testserver/admin/login"


async def test_losing_superuser_or_being_deactivated_logs_the_admin_out(
    client: httpx.AsyncClient, app: FastAPI, superuser: User
) -> None:
    for change in ({"is_superuser": False}, {"is_active": False}):
        await update(app, superuser.id, is_superuser=True, is_active=True)
        assert (await admin_login(client, superuser.email)).status_code == 302
        await update(app, superuser.id, **change)
        response = await client.get("/admin/user/list")
        assert response.status_code == 302, change
        assert response.headers["location"] == "http://testserver/admin/login"


async def test_admin_pages_never_show_the_password_hash(
    admin: httpx.AsyncClient, app: FastAPI, superuser: User, make_user: MakeUser
) -> None:
    user = await make_user(email="alice@example.com")
    job = await make_job(app, user=user, status=JobStatus.DEAD)
    pages = [
        "/admin/",
        "/admin/user/list",
        "/admin/user/list?search=alice",
        f"/admin/user/details/{user.id}",
        "/admin/job/list",
        f"/admin/job/details/{job.id}",
    ]
    for path in pages:
        response = await admin.get(path)
        assert response.status_code == 200, path
        for secret in (user.hashed_password, superuser.hashed_password):
            assert secret not in response.text, path
            assert secret.split("$")[-1] not in response.text, path  # not even its digest
        assert "hashed_password" not in response.text, path
    for path in (f"/admin/user/edit/{user.id}", "/admin/user/create", "/admin/user/export/csv"):
        assert (await admin.get(path)).status_code == 403, path
    assert (await admin.get("/admin/user/list?sortBy=hashed_password")).status_code == 400


async def test_admin_pages_may_not_be_framed(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/login")
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"


# --- cross-site requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
    ids=["cross-site", "same-site", "fetch-site-decides", "foreign-origin", "opaque-origin"],
)
async def test_a_cross_site_login_is_refused(
    client: httpx.AsyncClient, superuser: User, headers: dict[str, str]
) -> None:
    response = await client.post(
        "/admin/login",
        data={"username": superuser.email, "password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 403
    assert "admin_session" not in client.cookies
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "http://testserver"},
        {},
    ],
    ids=["same-origin", "typed-url", "own-origin", "not-a-browser"],
)
async def test_a_same_origin_or_non_browser_login_goes_through(
    client: httpx.AsyncClient, superuser: User, headers: dict[str, str]
) -> None:
    response = await client.post(
        "/admin/login",
        data={"username": superuser.email, "password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 302
    assert "admin_session" in client.cookies


async def test_a_cross_site_action_changes_nothing(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user(email="target@example.com")
    job = await make_job(app, user=user, status=JobStatus.DEAD)
    actions = [
        f"/admin/user/action/deactivate?pks={user.id}",
        f"/admin/user/action/mark-verified?pks={user.id}",
        f"/admin/job/action/retry?pks={job.id}",
    ]
    for path in actions:
        response = await admin.get(path, headers={"Sec-Fetch-Site": "cross-site"})
        assert response.status_code == 403, path
    stored = await load(app, User, user.id)
    assert stored.is_active
    assert not stored.is_verified
    assert (await load(app, Job, job.id)).status == JobStatus.DEAD
    # The same click from the admin's own pages works.
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    assert (await admin.get(actions[0], headers=same_origin)).status_code == 302
    assert not (await load(app, User, user.id)).is_active


async def test_pages_may_still_be_opened_from_another_site(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/admin/user/list", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200


async def test_api_keys_are_listed_without_their_hash_and_revocable(
    admin: httpx.AsyncClient, make_user: MakeUser
) -> None:
    owner = await make_user(email="keyholder@example.com")
    tokens = await login(admin, owner.email)
    created = await admin.post(
        "/api/v1/users/me/api-keys", json={"name": "nightly export"}, headers=bearer(tokens)
    )
    assert created.status_code == 201
    key = created.json()
    key_auth = {"Authorization": f"Bearer {key['secret']}"}
    assert (await admin.get("/api/v1/users/me", headers=key_auth)).status_code == 200

    page = await admin.get("/admin/api-key/list")
    assert page.status_code == 200
    assert "nightly export" in page.text
    assert key["prefix"] in page.text
    assert key["secret"] not in page.text

    response = await admin.get("/admin/api-key/action/revoke", params={"pks": key["id"]})
    assert response.status_code == 302
    assert (await admin.get("/api/v1/users/me", headers=key_auth)).status_code == 401
