"""A list's cursor is the service's own: a forged, altered or borrowed one is a clear 422."""

import base64
import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from tests.conftest import MakeUser, bearer, login


@pytest.fixture
async def admin(app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser) -> dict[str, str]:
    await make_user(email="admin@example.com", is_superuser=True, is_verified=True)
    await app.state.jobs.stop()
    for _ in range(2):
        await make_user()
    now = utcnow()
    rows = [
        {"name": name, "payload": {}, "status": JobStatus.DEAD, "max_attempts": 1,
         "id": uuid.uuid4(), "created_at": now - timedelta(seconds=i)}
        for i, name in enumerate(["report", "report", "digest", "digest"])
    ]  # fmt: skip
    async with app.state.db.transaction() as session:
        await session.execute(insert(Job), rows)
    return bearer(await login(client, "admin@example.com"))


async def next_cursor(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> str:
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    cursor = response.json()["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def detail_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    return detail


def altered(cursor: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-2] ^= 1  # one bit of the position
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor", ["", "not a cursor!", "AAAA", "A", base64.urlsafe_b64encode(b"x" * 40).decode()]
)
async def test_a_malformed_cursor_is_a_422(
    client: httpx.AsyncClient, admin: dict[str, str], cursor: str
) -> None:
    for path in ("/api/v1/users", "/api/v1/jobs"):
        response = await client.get(path, params={"cursor": cursor}, headers=admin)
        assert "Invalid cursor" in detail_of(response)


async def test_an_altered_cursor_is_a_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for path in ("/api/v1/users", "/api/v1/jobs"):
        cursor = await next_cursor(client, admin, f"{path}?limit=1")
        assert (await client.get(path, params={"cursor": cursor}, headers=admin)).status_code == 200
        response = await client.get(path, params={"cursor": altered(cursor)}, headers=admin)
        assert "Invalid cursor" in detail_of(response)


async def test_a_cursor_of_one_list_is_refused_by_the_other(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    users_cursor = await next_cursor(client, admin, "/api/v1/users?limit=1")
    jobs_cursor = await next_cursor(client, admin, "/api/v1/jobs?limit=1")
    jobs = await client.get("/api/v1/jobs", params={"cursor": users_cursor}, headers=admin)
    users = await client.get("/api/v1/users", params={"cursor": jobs_cursor}, headers=admin)
    assert "another list or filter" in detail_of(jobs)
    assert "another list or filter" in detail_of(users)


@pytest.mark.parametrize(
    ("made_for", "used_with"),
    [
        ({"status": "dead"}, {"status": "queued"}),
        ({"status": "dead"}, {}),
        ({"name": "report"}, {"name": "digest"}),
        ({"name": "report"}, {"name": "report", "status": "dead"}),
    ],
)
async def test_a_cursor_of_one_filter_is_refused_by_another(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    made_for: dict[str, str],
    used_with: dict[str, str],
) -> None:
    first = await client.get("/api/v1/jobs", params=made_for | {"limit": 1}, headers=admin)
    cursor = first.json()["next_cursor"]
    assert isinstance(cursor, str)
    same = await client.get("/api/v1/jobs", params=made_for | {"cursor": cursor}, headers=admin)
    assert same.status_code == 200
    other = await client.get("/api/v1/jobs", params=used_with | {"cursor": cursor}, headers=admin)
    assert "Invalid cursor" in detail_of(other)


OWN_LISTS = ("/api/v1/users/me/api-keys", "/api/v1/users/me/sessions")


@pytest.fixture
async def owners(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> tuple[dict[str, str], dict[str, str]]:
    """Two users, each with two sessions and two keys: lists of two pages at `limit=1`."""
    heads = []
    for _ in range(2):
        email = (await make_user()).email
        await login(client, email)
        tokens = bearer(await login(client, email))
        for name in ("one", "two"):
            made = await client.post(OWN_LISTS[0], json={"name": name}, headers=tokens)
            assert made.status_code == 201
        heads.append(tokens)
    return heads[0], heads[1]


@pytest.mark.parametrize("path", OWN_LISTS)
async def test_a_users_own_list_refuses_a_bad_cursor_or_limit(
    client: httpx.AsyncClient, owners: tuple[dict[str, str], dict[str, str]], path: str
) -> None:
    mine, _ = owners
    cursor = await next_cursor(client, mine, f"{path}?limit=1")
    assert (await client.get(path, params={"cursor": cursor}, headers=mine)).status_code == 200
    for bad in ("not a cursor!", "AAAA", altered(cursor)):
        response = await client.get(path, params={"cursor": bad}, headers=mine)
        assert "Invalid cursor" in detail_of(response)
    for limit in (0, 101):
        response = await client.get(path, params={"limit": limit}, headers=mine)
        assert response.status_code == 422


async def test_a_users_cursor_is_refused_by_another_user_and_by_the_other_list(
    client: httpx.AsyncClient, owners: tuple[dict[str, str], dict[str, str]]
) -> None:
    mine, theirs = owners
    keys, sessions = OWN_LISTS
    my_keys_cursor = await next_cursor(client, mine, f"{keys}?limit=1")
    my_sessions_cursor = await next_cursor(client, mine, f"{sessions}?limit=1")
    refused = [
        await client.get(keys, params={"cursor": my_keys_cursor}, headers=theirs),
        await client.get(sessions, params={"cursor": my_sessions_cursor}, headers=theirs),
        await client.get(sessions, params={"cursor": my_keys_cursor}, headers=mine),
        await client.get(keys, params={"cursor": my_sessions_cursor}, headers=mine),
    ]
    for response in refused:
        assert "another list or filter" in detail_of(response)
