"""Following every page of a list while rows land anywhere in its order sees each old row once.

New rows do not only arrive at the end: a transaction that commits late, or a clock a little
behind, puts a row before pages already read, or in the very instant of the last row read. An
OFFSET would then shift and show an old row twice; a cursor that names the last row does not.
"""

import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert

from app.db.models import Job, JobStatus
from tests.conftest import MakeUser, bearer, login

START = datetime(2020, 1, 1, tzinfo=UTC)
OLD = 9
Insert = Callable[[datetime], Awaitable[str]]


@pytest.fixture
async def admin(app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser) -> dict[str, str]:
    await make_user(email="admin@example.com", is_superuser=True, created_at=START)
    await app.state.jobs.stop()  # the jobs stay as they are put
    return bearer(await login(client, "admin@example.com"))


def add_user(make_user: MakeUser) -> Insert:
    async def add(at: datetime) -> str:
        return str((await make_user(created_at=at)).id)

    return add


def add_job(app: FastAPI) -> Insert:
    async def add(at: datetime) -> str:
        row = {
            "id": uuid.uuid4(),
            "name": "report",
            "payload": {},
            "status": JobStatus.SUCCEEDED,
            "max_attempts": 1,
            "created_at": at,
        }
        async with app.state.db.transaction() as session:
            await session.execute(insert(Job), [row])
        return str(row["id"])

    return add


@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/jobs"])
async def test_every_page_while_rows_land_anywhere_shows_each_old_row_once(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, admin: dict[str, str], path: str
) -> None:
    add = add_user(make_user) if path.endswith("users") else add_job(app)
    times = [START + timedelta(minutes=1 + i) for i in range(OLD)]
    old = {await add(at): at for at in times}
    rng = random.Random(13)
    seen: list[str] = []
    cursor = None
    for _ in range(4 * OLD):  # the old rows fit in OLD / 2 pages, the new ones push in
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await client.get(path, params=params, headers=admin)).json()
        items = body["items"]
        seen += [item["id"] for item in items]
        if (cursor := body["next_cursor"]) is None:
            break
        # Before the next page: a row before every old one, one among them, one in the very
        # instant of the last row read (its id falls either side), and one after them all.
        last = datetime.fromisoformat(items[-1]["created_at"])
        for at in (
            START + timedelta(seconds=1),
            rng.choice(times) + timedelta(seconds=rng.choice([-1, 1])),
            last,
            times[-1] + timedelta(hours=1),
        ):
            await add(at)
    else:
        pytest.fail(f"the pages never ended: {len(seen)} rows seen")
    shown_old = [row for row in seen if row in old]
    expected = sorted(old, key=lambda row: old[row], reverse=path.endswith("jobs"))
    assert shown_old == expected  # each old row once, in the list's order
    assert len(seen) == len(set(seen))  # and no new row twice either
