"""Sessions: a login is a session the user can see and end; ending it stops its tokens at once."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, update

from app.db.base import utcnow
from app.db.models import LoginSession, RefreshToken, User
from tests.conftest import MakeUser, bearer, login

SESSIONS = "/api/v1/users/me/sessions"
ME = "/api/v1/users/me"
PHONE = {"User-Agent": "Phone/1.0"}


def session_id(tokens: dict[str, str]) -> str:
    return str(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"])


async def login_from(client: httpx.AsyncClient, email: str, user_agent: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token",
        data={"username": email, "password": "correct horse battery"},
        headers={"User-Agent": user_agent},
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


async def test_sessions_lists_each_login_with_the_current_one_marked(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    laptop = await login_from(client, user.email, "Laptop/2.0")
    phone = await login_from(client, user.email, "Phone/1.0")

    response = await client.get(SESSIONS, headers=bearer(laptop))

    assert response.status_code == 200
    items = {item["id"]: item for item in response.json()["items"]}
    assert set(items) == {session_id(laptop), session_id(phone)}
    assert items[session_id(laptop)]["current"] is True
    assert items[session_id(phone)]["current"] is False
    assert items[session_id(phone)]["user_agent"] == "Phone/1.0"
    assert items[session_id(phone)]["ip"] == "127.0.0.1"
    assert set(items[session_id(phone)]) == {
        "id", "created_at", "last_used_at", "user_agent", "ip", "current",
    }  # fmt: skip


async def add_sessions(
    app: FastAPI, user_id: uuid.UUID, *ages: timedelta, ended: bool = False, expired: bool = False
) -> list[str]:
    """Sessions of the user opened `age` ago (a negative one: after now), as a login leaves them."""
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "user_agent": "Tablet/3.0",
            "created_at": now - age,
            "last_used_at": now - age,
            "expires_at": now + (timedelta(seconds=-1) if expired else timedelta(days=1)),
            "revoked_at": now if ended else None,
        }
        for age in ages
    ]
    async with app.state.db.transaction() as session:
        await session.execute(insert(LoginSession), rows)
    return [str(row["id"]) for row in rows]


async def test_sessions_page_newest_first_with_the_current_one_marked_on_its_page(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    second = timedelta(seconds=1)
    newer = await add_sessions(app, user.id, -2 * second, -1 * second)
    older = await add_sessions(app, user.id, 1 * second, 2 * second)
    await add_sessions(app, user.id, 3 * second, ended=True)
    await add_sessions(app, user.id, 4 * second, expired=True)
    await add_sessions(app, (await make_user()).id, 5 * second)

    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get(SESSIONS, params=params, headers=bearer(tokens))
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        if (cursor := response.json()["next_cursor"]) is None:
            break

    assert [[item["id"] for item in page] for page in pages] == [
        newer,
        [session_id(tokens), older[0]],
        [older[1]],
    ]
    assert [item["current"] for page in pages for item in page] == [
        False, False, True, False, False,
    ]  # fmt: skip


async def test_ending_a_session_stops_its_access_and_refresh_tokens_at_once(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    laptop = await login(client, user.email)
    lost_phone = await login_from(client, user.email, "Phone/1.0")
    assert (await client.get(ME, headers=bearer(lost_phone))).status_code == 200

    response = await client.delete(f"{SESSIONS}/{session_id(lost_phone)}", headers=bearer(laptop))

    assert response.status_code == 204
    assert (await client.get(ME, headers=bearer(lost_phone))).status_code == 401
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": lost_phone["refresh_token"]}
    )
    assert refresh.status_code == 401
    assert (await client.get(ME, headers=bearer(laptop))).status_code == 200
    listed = await client.get(SESSIONS, headers=bearer(laptop))
    assert [item["id"] for item in listed.json()["items"]] == [session_id(laptop)]


async def test_ending_another_users_session_is_not_found_and_changes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    mine = await login(client, (await make_user()).email)
    theirs = await login(client, (await make_user()).email)

    response = await client.delete(f"{SESSIONS}/{session_id(theirs)}", headers=bearer(mine))

    assert response.status_code == 404
    assert (await client.get(ME, headers=bearer(theirs))).status_code == 200


async def test_ending_an_unknown_or_ended_session_is_not_found(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    other = await login(client, user.email)
    assert (
        await client.delete(f"{SESSIONS}/{uuid.uuid4()}", headers=bearer(tokens))
    ).status_code == 404
    assert (
        await client.delete(f"{SESSIONS}/{session_id(other)}", headers=bearer(tokens))
    ).status_code == 204
    again = await client.delete(f"{SESSIONS}/{session_id(other)}", headers=bearer(tokens))
    assert again.status_code == 404


async def test_logout_ends_only_that_session_and_its_access_tokens(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    leaving = await login(client, user.email)
    staying = await login(client, user.email)

    response = await client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": leaving["refresh_token"]},
        headers=bearer(leaving),
    )

    assert response.status_code == 204
    assert (await client.get(ME, headers=bearer(leaving))).status_code == 401
    assert (await client.get(ME, headers=bearer(staying))).status_code == 200


async def test_a_refresh_keeps_the_session_and_updates_when_it_was_last_used(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    first = await login(client, user.email)
    async with app.state.db.transaction() as session:
        before = await session.get(LoginSession, uuid.UUID(session_id(first)))
    assert before is not None

    response = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )

    assert response.status_code == 200
    second = response.json()
    assert session_id(second) == session_id(first)
    async with app.state.db.transaction() as session:
        after = await session.get(LoginSession, uuid.UUID(session_id(first)))
        assert after is not None
        found = await session.scalars(
            select(RefreshToken).where(RefreshToken.session_id == after.id)
        )
        tokens = found.all()
    assert after is not None
    assert after.last_used_at > before.last_used_at
    assert len(tokens) == 2
    assert sum(token.revoked_at is None for token in tokens) == 1


async def test_a_refresh_token_issued_under_an_older_token_version_is_refused(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    """Only the version moves and no session is ended: the version check alone refuses it."""
    user = await make_user()
    tokens = await login(client, user.email)
    async with app.state.db.transaction() as session:
        await session.execute(
            update(User).where(User.id == user.id).values(token_version=User.token_version + 1)
        )

    response = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )

    assert response.status_code == 401
    async with app.state.db.transaction() as session:
        login_session = await session.get(LoginSession, uuid.UUID(session_id(tokens)))
        assert login_session is not None
        assert login_session.revoked_at is None  # refused by the version, not by an ending


async def test_a_password_change_ends_every_session(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    changing = await login(client, user.email)
    other = await login(client, user.email)

    response = await client.patch(
        ME,
        json={"password": "another horse battery", "current_password": "correct horse battery"},
        headers=bearer(changing),
    )

    assert response.status_code == 200
    for tokens in (changing, other):
        assert (await client.get(ME, headers=bearer(tokens))).status_code == 401
        refresh = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refresh.status_code == 401
    fresh = await login(client, user.email, "another horse battery")
    listed = await client.get(SESSIONS, headers=bearer(fresh))
    assert [item["id"] for item in listed.json()["items"]] == [session_id(fresh)]


PASSWORDS = ("correct horse battery", "another horse battery")


async def refresh_while_the_password_changes(
    client: httpx.AsyncClient, email: str, password: str, new_password: str, statuses: list[int]
) -> list[dict[str, str]]:
    """Four stolen sessions refresh in a loop while the owner changes the password; the
    tokens each loop held last."""
    owner = await login(client, email, password)
    stolen = [await login(client, email, password) for _ in range(4)]
    changed = asyncio.Event()

    async def keep_refreshing(tokens: dict[str, str]) -> dict[str, str]:
        while not changed.is_set():
            response = await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
            tokens = response.json()
        return tokens

    async def change_password() -> None:
        await asyncio.sleep(0)  # let the refreshes start first
        response = await client.patch(
            ME, json={"password": new_password, "current_password": password}, headers=bearer(owner)
        )
        statuses.append(response.status_code)
        changed.set()
        assert response.status_code == 200, response.text

    latest, _ = await asyncio.gather(
        asyncio.gather(*map(keep_refreshing, stolen)), change_password()
    )
    return latest


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_stolen_sessions_refreshing_in_a_loop_do_not_survive_a_password_change(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """Refreshes serialise with the change on the user row: no deadlock (a 500 before), and
    no session minted while the password changes outlives it."""
    user = await make_user()
    statuses: list[int] = []
    for round_ in range(10):
        password, new_password = PASSWORDS[round_ % 2], PASSWORDS[(round_ + 1) % 2]
        latest = await refresh_while_the_password_changes(
            client, user.email, password, new_password, statuses
        )
        for tokens in latest:
            assert (await client.get(ME, headers=bearer(tokens))).status_code == 401
            refresh = await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refresh.status_code == 401
    assert 500 not in statuses
    assert set(statuses) <= {200, 401}
    assert statuses.count(200) > 10  # the refreshes really raced the changes
