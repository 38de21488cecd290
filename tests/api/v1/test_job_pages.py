"""GET /api/v1/jobs pages by cursor, newest first, filtered by status and by name."""

import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from tests.conftest import MakeUser, bearer, login
from tests.pages import all_pages, flat


@pytest.fixture
async def admin(app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser) -> dict[str, str]:
    await make_user(email="admin@example.com", is_superuser=True, is_verified=True)
    await app.state.jobs.stop()  # the jobs stay as they are put
    return bearer(await login(client, "admin@example.com"))


async def add_jobs(app: FastAPI, count: int, *, name: str, status: JobStatus) -> list[str]:
    """`count` jobs a microsecond apart, newest first, all newer than any job before them."""
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "name": name,
            "payload": {},
            "status": status,
            "max_attempts": 3,
            "created_at": now - timedelta(microseconds=i),
        }
        for i in range(count)
    ]
    async with app.state.db.transaction() as session:
        await session.execute(insert(Job), rows)
    return [str(row["id"]) for row in rows]


async def test_jobs_page_newest_first_to_the_end(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI
) -> None:
    newest = await add_jobs(app, 5, name="report", status=JobStatus.SUCCEEDED)
    pages = await all_pages(client, "/api/v1/jobs", admin, limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert flat(pages) == newest


async def test_jobs_filter_by_name(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI
) -> None:
    reports = await add_jobs(app, 3, name="report", status=JobStatus.QUEUED)
    await add_jobs(app, 2, name="digest", status=JobStatus.QUEUED)
    pages = await all_pages(client, "/api/v1/jobs", admin, name="report", limit=2)
    assert flat(pages) == reports


async def test_jobs_filter_by_status_and_name_together(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI
) -> None:
    wanted = await add_jobs(app, 3, name="report", status=JobStatus.DEAD)
    await add_jobs(app, 2, name="report", status=JobStatus.QUEUED)
    await add_jobs(app, 2, name="digest", status=JobStatus.DEAD)
    params = {"status": "dead", "name": "report", "limit": 1}
    assert flat(await all_pages(client, "/api/v1/jobs", admin, **params)) == wanted


async def test_jobs_pages_see_every_old_job_once_while_jobs_are_enqueued(
    client: httpx.AsyncClient, admin: dict[str, str], app: FastAPI
) -> None:
    await add_jobs(app, 7, name="report", status=JobStatus.QUEUED)
    old = flat(await all_pages(client, "/api/v1/jobs", admin))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/api/v1/jobs", params=params, headers=admin)).json()
        seen += [item["id"] for item in body["items"]]
        if (cursor := body["next_cursor"]) is None:
            break
        await add_jobs(app, 2, name="report", status=JobStatus.QUEUED)  # newer than them all
    assert seen == old  # each once, in order: the new ones sort before the pages already seen


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "name=" + "n" * 101])
async def test_jobs_reject_out_of_bounds_paging(
    client: httpx.AsyncClient, admin: dict[str, str], query: str
) -> None:
    assert (await client.get(f"/api/v1/jobs?{query}", headers=admin)).status_code == 422
