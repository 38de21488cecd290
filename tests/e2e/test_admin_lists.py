"""The admin's lists page by cursor: any depth is reached by Next, and no page counts a table
or skips rows with OFFSET."""

import html
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, insert, select

from app.db.base import utcnow
from app.db.models import Job, JobStatus, User
from app.schemas.api_keys import ApiKeyCreate
from app.services import api_keys
from tests.conftest import MakeUser
from tests.e2e.admin import admin_login

COUNT = re.compile(r"\bcount\(", re.IGNORECASE)
OFFSET = re.compile(r"\bOFFSET\b", re.IGNORECASE)
ROW_ID = re.compile(r'<input type="hidden" value="([0-9a-f-]{36})">')
NEXT = re.compile(r'rel="next" href="([^"#]+)"')
# Past the first 10,001 rows, where sqladmin's bounded count and OFFSET pages used to stop.
DEEP = 10_050
# Small enough that sqladmin renders a page within the test suite's slow-callback bound.
DEEP_PAGE = 25


@contextmanager
def statements(app: FastAPI) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the app's engine runs inside the block, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    engine = app.state.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
async def admin(client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI) -> httpx.AsyncClient:
    await make_user(email="root@example.com", is_superuser=True, is_verified=True)
    await app.state.jobs.stop()  # the jobs stay as they are put
    assert (await admin_login(client, "root@example.com")).status_code == 302
    return client


async def put_jobs(
    app: FastAPI, count: int, *, status: JobStatus = JobStatus.SUCCEEDED
) -> list[str]:
    """`count` jobs, newest first as the list shows them: their ids in that order."""
    now = utcnow()
    rows = [
        {"id": uuid.uuid4(), "name": "report", "payload": {}, "status": status,
         "max_attempts": 1, "created_at": now - timedelta(seconds=i)}
        for i in range(count)
    ]  # fmt: skip
    async with app.state.db.transaction() as session:
        for start in range(0, count, 250):  # batches too small to hold the event loop
            await session.execute(insert(Job), rows[start : start + 250])
    return [str(row["id"]) for row in rows]


def skips_rows(statement: str, parameters: Any) -> bool:
    """An OFFSET other than the `OFFSET 0` SQLite's dialect writes after every LIMIT."""
    if not OFFSET.search(statement):
        return False
    return not (statement.rstrip().endswith("OFFSET ?") and parameters[-1] == 0)


def row_ids(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return ROW_ID.findall(page.text)


def next_link(page: httpx.Response) -> str | None:
    found = NEXT.search(page.text)
    return html.unescape(found.group(1)) if found else None


async def follow(admin: httpx.AsyncClient, url: str) -> tuple[list[str], int]:
    """The row ids of every page from `url` on, following Next; and how many pages."""
    ids: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        page = await admin.get(next_url)
        ids += row_ids(page)
        pages += 1
        next_url = next_link(page)
    return ids, pages


async def test_next_links_reach_the_rows_past_the_ten_thousandth(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    expected = await put_jobs(app, DEEP)
    ids, pages = await follow(admin, f"/admin/job/list?pageSize={DEEP_PAGE}")
    assert ids == expected  # each row once, in the list's order, the oldest last
    assert pages == -(-DEEP // DEEP_PAGE)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/user/list?pageSize=2",
        "/admin/user/list?pageSize=2&search=example",
        "/admin/user/list?pageSize=2&sortBy=email&sort=desc",
        "/admin/job/list?pageSize=2",
        "/admin/job/list?pageSize=2&status=dead&sortBy=created_at&sort=asc",
        "/admin/api-key/list?pageSize=2",
    ],
)
async def test_no_list_page_counts_or_offsets(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, path: str
) -> None:
    for _ in range(4):
        user = await make_user()
    async with app.state.db.transaction() as session:
        for i in range(5):
            await api_keys.create(session, user_id=user.id, data=ApiKeyCreate(name=f"key {i}"))
    await put_jobs(app, 5, status=JobStatus.DEAD)
    with statements(app) as seen:
        ids, pages = await follow(admin, path)
    assert pages >= 3, "the statements of pages after the first were not seen"
    assert len(ids) == len(set(ids))
    listed = [(s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]
    assert listed, "the list pages ran no SELECT: the capture missed them"
    for statement, parameters in listed:
        assert not COUNT.search(statement), f"a count: {statement}"
        assert not skips_rows(statement, parameters), f"an OFFSET: {statement} {parameters}"


async def test_sorted_by_email_the_pages_hold_every_user_once_in_order(
    admin: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    for i in range(5):  # made in the reverse of their emails' order
        await make_user(email=f"user{4 - i}@example.com")
    ids, pages = await follow(admin, "/admin/user/list?pageSize=2&sortBy=email&sort=asc")
    assert pages == 3  # root and the five users, two to a page
    async with app.state.db.transaction() as session:
        by_email = list(await session.scalars(select(User.id).order_by(User.email)))
    assert ids == [str(user_id) for user_id in by_email]


async def test_a_filtered_list_pages_within_its_filter(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    await put_jobs(app, 3, status=JobStatus.SUCCEEDED)
    dead = await put_jobs(app, 5, status=JobStatus.DEAD)
    ids, _ = await follow(admin, "/admin/job/list?pageSize=2&status=dead")
    assert ids == dead


@pytest.mark.parametrize(
    "tamper",
    [
        lambda cursor: cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB"),
        lambda cursor: "not a cursor!",
        lambda cursor: "A" * 2000,
    ],
)
async def test_a_tampered_cursor_gives_the_first_page(
    admin: httpx.AsyncClient, app: FastAPI, tamper: Any
) -> None:
    first = await put_jobs(app, 5)
    start = await admin.get("/admin/job/list?pageSize=2")
    link = next_link(start)
    assert link is not None
    cursor = httpx.URL(link).params["cursor"]
    page = await admin.get("/admin/job/list", params={"pageSize": 2, "cursor": tamper(cursor)})
    assert row_ids(page) == first[:2]


async def test_a_cursor_carried_to_another_sort_gives_its_first_page(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    newest_first = await put_jobs(app, 5)
    link = next_link(await admin.get("/admin/job/list?pageSize=2"))
    assert link is not None
    # The sort links keep the other parameters, the cursor among them.
    page = await admin.get(link + "&sortBy=created_at&sort=asc")
    assert row_ids(page) == newest_first[::-1][:2]
    assert "First" in page.text
