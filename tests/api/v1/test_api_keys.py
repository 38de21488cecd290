"""Personal API keys: shown once, stored as a hash, act as their owner, revocable, mailed about."""

import uuid
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import insert, select, update

from app.core import security
from app.db.base import utcnow
from app.db.models import ApiKey, Job, JobStatus, User
from tests.api.v1.test_sessions import session_id
from tests.conftest import MakeUser, SmtpSink, bearer, login
from tests.jobs import wait_for_job
from tests.pages import all_pages, flat

KEYS = "/api/v1/users/me/api-keys"
ME = "/api/v1/users/me"


def key_auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def make_key(
    client: httpx.AsyncClient, tokens: dict[str, str], **body: object
) -> dict[str, str]:
    response = await client.post(KEYS, json={"name": "ci", **body}, headers=bearer(tokens))
    assert response.status_code == 201, response.text
    created: dict[str, str] = response.json()
    return created


async def test_creating_a_key_shows_its_secret_once_and_stores_only_a_hash(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)

    created = await make_key(client, tokens, name="deploy bot", expires_in_days=30)

    assert created["secret"].startswith("ak_")
    assert created["prefix"] == created["secret"][:11]
    assert created["name"] == "deploy bot"
    assert created["expires_at"] is not None
    assert created["last_used_at"] is None
    async with app.state.db.transaction() as session:
        stored = await session.get(ApiKey, uuid.UUID(created["id"]))
    assert stored is not None
    assert stored.key_hash == security.hash_token(created["secret"])
    assert created["secret"] not in {stored.key_hash, stored.prefix}
    listed = await client.get(KEYS, headers=bearer(tokens))
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert "secret" not in item
    assert set(item) == {"id", "name", "prefix", "created_at", "last_used_at", "expires_at"}


async def add_keys(
    app: FastAPI, user_id: uuid.UUID, count: int, *, revoked: bool = False
) -> list[str]:
    """`count` keys of the user a microsecond apart, newest first (no mail: not made by the API)."""
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "name": f"key {i}",
            "prefix": "ak_" + "x" * 8,
            "key_hash": uuid.uuid4().hex,
            "created_at": now - timedelta(microseconds=i),
            "revoked_at": now if revoked else None,
        }
        for i in range(count)
    ]
    async with app.state.db.transaction() as session:
        await session.execute(insert(ApiKey), rows)
    return [str(row["id"]) for row in rows]


async def test_keys_page_newest_first_to_the_end_without_revoked_or_others_keys(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    await add_keys(app, user.id, 3, revoked=True)
    await add_keys(app, (await make_user()).id, 3)
    live = await add_keys(app, user.id, 5)

    pages = await all_pages(client, KEYS, bearer(tokens), limit=2)

    assert [len(page) for page in pages] == [2, 2, 1]  # all_pages stops at a null next_cursor
    assert flat(pages) == live
    first = await client.get(KEYS, params={"limit": 5}, headers=bearer(tokens))
    assert [item["id"] for item in first.json()["items"]] == live
    assert first.json()["next_cursor"] is None  # exactly a page's worth: no empty page after it


async def test_a_key_acts_as_its_owner_and_records_when_it_was_used(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user(email="owner@example.com")
    created = await make_key(client, await login(client, user.email))

    response = await client.get(ME, headers=key_auth(created["secret"]))

    assert response.status_code == 200
    assert response.json()["email"] == "owner@example.com"
    async with app.state.db.transaction() as session:
        stored = await session.get(ApiKey, uuid.UUID(created["id"]))
    assert stored is not None
    assert stored.last_used_at is not None


async def test_a_revoked_key_is_refused_at_once(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)
    created = await make_key(client, tokens)
    assert (await client.get(ME, headers=key_auth(created["secret"]))).status_code == 200

    response = await client.delete(f"{KEYS}/{created['id']}", headers=bearer(tokens))

    assert response.status_code == 204
    assert (await client.get(ME, headers=key_auth(created["secret"]))).status_code == 401
    assert (await client.get(KEYS, headers=bearer(tokens))).json() == {
        "items": [],
        "next_cursor": None,
    }


async def test_an_expired_key_is_refused(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    created = await make_key(
        client, await login(client, (await make_user()).email), expires_in_days=1
    )
    async with app.state.db.transaction() as session:
        await session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(seconds=1)))

    assert (await client.get(ME, headers=key_auth(created["secret"]))).status_code == 401


async def test_an_unknown_or_malformed_key_is_refused(client: httpx.AsyncClient) -> None:
    for secret in ("ak_" + "x" * 43, "ak_", "ak_" + "y" * 5000):
        assert (await client.get(ME, headers=key_auth(secret))).status_code == 401
    latin1 = {b"Authorization": "Bearer ak_\u00e9t\u00e9".encode("latin-1")}
    assert (await client.get(ME, headers=latin1)).status_code == 401


async def test_a_key_of_a_deactivated_user_is_refused(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    created = await make_key(client, await login(client, user.email))
    async with app.state.db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(is_active=False))

    assert (await client.get(ME, headers=key_auth(created["secret"]))).status_code == 401


async def test_revoking_another_users_key_is_not_found_and_keeps_it_working(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    theirs = await make_key(client, await login(client, (await make_user()).email))
    mine = await login(client, (await make_user()).email)

    response = await client.delete(f"{KEYS}/{theirs['id']}", headers=bearer(mine))

    assert response.status_code == 404
    assert (await client.get(ME, headers=key_auth(theirs["secret"]))).status_code == 200


async def test_a_key_cannot_manage_keys_sessions_or_the_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)
    created = await make_key(client, tokens)
    auth = key_auth(created["secret"])

    refused = [
        await client.post(KEYS, json={"name": "more"}, headers=auth),
        await client.get(KEYS, headers=auth),
        await client.delete(f"{KEYS}/{created['id']}", headers=auth),
        await client.get("/api/v1/users/me/sessions", headers=auth),
        await client.delete(f"/api/v1/users/me/sessions/{session_id(tokens)}", headers=auth),
        await client.patch(
            ME,
            json={"password": "another horse battery", "current_password": "correct horse battery"},
            headers=auth,
        ),
    ]

    assert [response.status_code for response in refused] == [403] * 6
    assert refused[0].json() == {"detail": "This needs a login session; an API key cannot do it"}
    # Nothing was done: the key and the login session it tried to end both still work.
    assert (await client.get(ME, headers=auth)).status_code == 200
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 200
    # A profile change that is not about the password is the owner's to make with a key.
    renamed = await client.patch(ME, json={"name": "Bot Owner"}, headers=auth)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Bot Owner"


async def test_creating_a_key_emails_its_owner(
    client: httpx.AsyncClient, app: FastAPI, smtp: SmtpSink, make_user: MakeUser
) -> None:
    user = await make_user(email="careful@example.com")
    created = await make_key(client, await login(client, user.email), name="laptop script")

    [message] = await smtp.wait_for(1)

    assert message["To"] == "careful@example.com"
    assert "API key" in message["Subject"]
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "laptop script" in text
    assert created["prefix"] in text
    assert created["secret"] not in message.as_string()
    async with app.state.db.transaction() as session:
        job = await session.scalar(select(Job))
    assert job is not None
    await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)


async def test_creating_a_key_validates_its_body(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)
    for body in ({}, {"name": ""}, {"name": "x", "expires_in_days": 0}, {"name": "x", "extra": 1}):
        response = await client.post(KEYS, json=body, headers=bearer(tokens))
        assert response.status_code == 422, body
    assert (await client.get(KEYS, headers=bearer(tokens))).json() == {
        "items": [],
        "next_cursor": None,
    }
