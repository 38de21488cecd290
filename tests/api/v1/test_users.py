import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.db.models import User
from app.db.session import Database
from app.main import create_app
from tests.conftest import PASSWORD, MakeUser, bearer, login
from tests.pages import all_pages, flat

NEW_PASSWORD = "another horse battery"


async def stored_user(app: FastAPI, user_id: uuid.UUID) -> User:
    db: Database = app.state.db
    async with db.transaction() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user


async def count_users(app: FastAPI, email: str) -> int:
    async with app.state.db.transaction() as session:
        count = await session.scalar(
            select(func.count()).select_from(User).where(User.email_matches(email))
        )
    return count or 0


async def superuser_headers(client: httpx.AsyncClient, make_user: MakeUser) -> dict[str, str]:
    admin = await make_user(is_superuser=True)
    return bearer(await login(client, admin.email))


# --- GET /users/me ------------------------------------------------------------------------


async def test_read_me_returns_the_authenticated_user(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(email="ada@example.com", name="Ada")
    response = await client.get("/api/v1/users/me", headers=bearer(await login(client, user.email)))
    assert response.status_code == 200
    assert response.json() == {
        "id": str(user.id),
        "email": "ada@example.com",
        "name": "Ada",
        "is_active": True,
        "is_verified": False,
        "created_at": response.json()["created_at"],
    }


async def test_read_me_without_token_is_401_with_bearer_challenge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_read_me_with_garbage_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_read_me_rejects_a_user_deactivated_after_login(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    async with app.state.db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(is_active=False))
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- PATCH /users/me ----------------------------------------------------------------------


async def test_update_me_changes_name_stripped_of_surrounding_whitespace(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(name="Old Name")
    headers = bearer(await login(client, user.email))
    response = await client.patch(
        "/api/v1/users/me", json={"name": "  New Name \t"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "New Name"
    assert (await stored_user(app, user.id)).name == "New Name"


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * 101, "line\nbreak", "nul\x00byte", 42],
    ids=["empty", "blank", "too-long", "control-char", "nul", "not-a-string"],
)
async def test_update_me_rejects_invalid_name(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser, name: Any
) -> None:
    user = await make_user(name="Kept")
    headers = bearer(await login(client, user.email))
    response = await client.patch("/api/v1/users/me", json={"name": name}, headers=headers)
    assert response.status_code == 422
    assert (await stored_user(app, user.id)).name == "Kept"


async def test_update_me_requires_current_password_to_set_a_new_one(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    response = await client.patch(
        "/api/v1/users/me", json={"password": NEW_PASSWORD}, headers=headers
    )
    assert response.status_code == 422
    assert "current_password" in response.text
    await login(client, user.email, PASSWORD)


async def test_update_me_with_wrong_current_password_is_400_and_keeps_the_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    response = await client.patch(
        "/api/v1/users/me",
        json={"password": NEW_PASSWORD, "current_password": "not the password"},
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "Current password is incorrect"}
    await login(client, user.email, PASSWORD)
    refused = await client.post(
        "/api/v1/auth/token", data={"username": user.email, "password": NEW_PASSWORD}
    )
    assert refused.status_code == 401


async def test_update_me_with_wrong_current_password_keeps_the_session(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    await client.patch(
        "/api/v1/users/me",
        json={"password": NEW_PASSWORD, "current_password": "not the password"},
        headers=headers,
    )
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200


async def test_update_me_changes_password_so_only_the_new_one_logs_in(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    response = await client.patch(
        "/api/v1/users/me",
        json={"password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    await login(client, user.email, NEW_PASSWORD)
    old = await client.post(
        "/api/v1/auth/token", data={"username": user.email, "password": PASSWORD}
    )
    assert old.status_code == 401


async def test_update_me_password_change_ends_existing_sessions(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    response = await client.patch(
        "/api/v1/users/me",
        json={"password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert response.status_code == 200, response.text
    assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401


@pytest.mark.parametrize(
    "body",
    [{"is_superuser": True}, {"email": "other@example.com"}, {"name": "Ok", "is_active": False}],
    ids=["is_superuser", "email", "is_active"],
)
async def test_update_me_rejects_unknown_fields(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    body: dict[str, Any],
) -> None:
    user = await make_user(name="Kept")
    headers = bearer(await login(client, user.email))
    response = await client.patch("/api/v1/users/me", json=body, headers=headers)
    assert response.status_code == 422
    stored = await stored_user(app, user.id)
    assert (stored.name, stored.email, stored.is_superuser, stored.is_active) == (
        "Kept",
        user.email,
        False,
        True,
    )


async def test_update_me_with_empty_body_leaves_the_user_unchanged(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(name="Same")
    headers = bearer(await login(client, user.email))
    before = await client.get("/api/v1/users/me", headers=headers)
    response = await client.patch("/api/v1/users/me", json={}, headers=headers)
    assert response.status_code == 200
    assert response.json() == before.json()
    assert (await stored_user(app, user.id)).updated_at == user.updated_at


async def test_update_me_advances_updated_at(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(name="Before")
    headers = bearer(await login(client, user.email))
    before = (await stored_user(app, user.id)).updated_at
    response = await client.patch("/api/v1/users/me", json={"name": "After"}, headers=headers)
    assert response.status_code == 200
    assert (await stored_user(app, user.id)).updated_at > before


async def test_update_me_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/v1/users/me", json={"name": "Nobody"})
    assert response.status_code == 401


# --- GET /users/{id} ----------------------------------------------------------------------


async def test_read_user_returns_self(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    response = await client.get(f"/api/v1/users/{user.id}", headers=headers)
    assert response.status_code == 200
    assert response.json()["id"] == str(user.id)
    assert response.json()["email"] == user.email


async def test_read_user_hides_other_users_from_a_normal_user_as_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    other = await make_user()
    headers = bearer(await login(client, user.email))
    existing = await client.get(f"/api/v1/users/{other.id}", headers=headers)
    missing = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=headers)
    assert existing.status_code == 404
    # Existence is not confirmed: an existing and a missing id answer alike.
    assert existing.json() == missing.json()


async def test_read_user_lets_a_superuser_read_anyone(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    other = await make_user(name="Someone")
    headers = await superuser_headers(client, make_user)
    response = await client.get(f"/api/v1/users/{other.id}", headers=headers)
    assert response.status_code == 200
    assert response.json()["id"] == str(other.id)
    assert response.json()["name"] == "Someone"
    assert "hashed_password" not in response.json()


async def test_read_user_unknown_id_is_404_for_a_superuser(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    headers = await superuser_headers(client, make_user)
    response = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


async def test_read_user_rejects_a_malformed_id(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = bearer(await login(client, user.email))
    response = await client.get("/api/v1/users/not-a-uuid", headers=headers)
    assert response.status_code == 422


async def test_read_user_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/users/{uuid.uuid4()}")
    assert response.status_code == 401


# --- GET /users ---------------------------------------------------------------------------


async def test_list_users_gives_a_superuser_a_page_of_users(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await superuser_headers(client, make_user)
    response = await client.get("/api/v1/users", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "next_cursor"}
    assert body["next_cursor"] is None  # everything fitted on the first page
    assert len(body["items"]) == 2
    assert str(user.id) in {item["id"] for item in body["items"]}
    assert all("hashed_password" not in item for item in body["items"])


async def test_list_users_is_forbidden_to_a_normal_user(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    response = await client.get("/api/v1/users", headers=bearer(await login(client, user.email)))
    assert response.status_code == 403


async def test_list_users_without_token_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/users")).status_code == 401


async def test_list_users_pages_follow_the_cursor_to_the_end_oldest_first(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    headers = await superuser_headers(client, make_user)
    for _ in range(6):
        await make_user()
    everyone = (await client.get("/api/v1/users?limit=100", headers=headers)).json()["items"]
    pages = await all_pages(client, "/api/v1/users", headers, limit=2)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert flat(pages) == [item["id"] for item in everyone]
    assert [item["created_at"] for item in everyone] == sorted(i["created_at"] for i in everyone)


async def test_list_users_orders_rows_of_one_instant_by_id(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """Rows created in the same microsecond are neither skipped nor repeated across pages."""
    headers = await superuser_headers(client, make_user)
    instant = datetime(2000, 1, 1, tzinfo=UTC)  # before the superuser
    same = [str((await make_user(created_at=instant)).id) for _ in range(5)]
    pages = await all_pages(client, "/api/v1/users", headers, limit=1)
    assert flat(pages)[:5] == sorted(same, key=uuid.UUID)


async def test_list_users_pages_see_every_old_user_once_while_users_register(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    headers = await superuser_headers(client, make_user)
    for _ in range(6):
        await make_user()
    old = [
        item["id"] for item in (await client.get("/api/v1/users", headers=headers)).json()["items"]
    ]
    seen: list[str] = []
    cursor = None
    while True:
        await make_user()  # and another one arrives before each page
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/api/v1/users", params=params, headers=headers)).json()
        seen += [item["id"] for item in body["items"]]
        if (cursor := body["next_cursor"]) is None:
            break
    assert [user_id for user_id in seen if user_id in old] == old
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=-1", "limit=abc", "cursor=" + "A" * 513]
)
async def test_list_users_rejects_out_of_bounds_paging(
    client: httpx.AsyncClient, make_user: MakeUser, query: str
) -> None:
    headers = await superuser_headers(client, make_user)
    response = await client.get(f"/api/v1/users?{query}", headers=headers)
    assert response.status_code == 422


async def test_list_users_answers_the_largest_page(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    headers = await superuser_headers(client, make_user)
    response = await client.get("/api/v1/users?limit=100", headers=headers)
    assert response.status_code == 200
    assert response.json()["next_cursor"] is None


# --- the first superuser from the settings ------------------------------------------------

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "admin password 123"


@pytest.fixture
def superuser_apps(app: FastAPI, settings: Settings) -> tuple[FastAPI, FastAPI]:
    """Two more applications on the test database, both configured with a first superuser.

    Built here because building an app is synchronous work the loop guard would count; built
    after `app`, whose teardown then empties the tables these apps wrote.
    """
    configured = settings.model_copy(
        update={"first_superuser_email": ADMIN_EMAIL, "first_superuser_password": ADMIN_PASSWORD}
    )
    return create_app(configured), create_app(configured)


@asynccontextmanager
async def running_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_first_superuser_from_settings_can_log_in_and_list_users(
    superuser_apps: tuple[FastAPI, FastAPI],
) -> None:
    async with running_client(superuser_apps[0]) as client:
        tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
        response = await client.get("/api/v1/users", headers=bearer(tokens))
    assert response.status_code == 200
    assert [item["email"] for item in response.json()["items"]] == [ADMIN_EMAIL]


async def test_first_superuser_is_created_once_across_restarts(
    app: FastAPI, superuser_apps: tuple[FastAPI, FastAPI]
) -> None:
    first, second = superuser_apps
    async with running_client(first):
        pass
    async with running_client(second) as client:
        await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert await count_users(app, ADMIN_EMAIL) == 1


async def test_first_superuser_is_created_once_by_apps_starting_together(
    app: FastAPI, superuser_apps: tuple[FastAPI, FastAPI]
) -> None:
    async def start(app: FastAPI) -> None:
        async with running_client(app):
            pass

    await asyncio.gather(*(start(app) for app in superuser_apps))
    assert await count_users(app, ADMIN_EMAIL) == 1


async def test_first_superuser_leaves_an_existing_account_with_that_email_alone(
    app: FastAPI, superuser_apps: tuple[FastAPI, FastAPI], make_user: MakeUser
) -> None:
    existing = await make_user(email=ADMIN_EMAIL.upper())
    async with running_client(superuser_apps[0]):
        pass
    assert await count_users(app, ADMIN_EMAIL) == 1
    assert (await stored_user(app, existing.id)).is_superuser is False


# --- the transaction commits before the response is sent -----------------------------------


async def test_register_answers_503_not_201_when_the_commit_fails(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_commit(self: AsyncSession) -> None:
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("boom"))

    with monkeypatch.context() as patch:
        patch.setattr(AsyncSession, "commit", failing_commit)
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "lost@example.com", "name": "Lost", "password": PASSWORD},
        )
    assert response.status_code == 503
    assert await count_users(app, "lost@example.com") == 0
