"""A deadlock or serialisation failure that outlasts its retries answers 503 with Retry-After,
never a 500.

PostgreSQL only: SQLite serialises writers and never reports these (a busy database is its
"database is locked", already a 503). The conflicts are raised by the server itself, so each
reaches the handler as the driver and SQLAlchemy really wrap it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.services import sessions
from tests.conftest import PASSWORD, MakeUser, bearer, login

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _raise(sqlstate: str) -> str:
    """PL/pgSQL that fails as the server does when it breaks a deadlock or a conflict."""
    return f"RAISE EXCEPTION 'injected conflict' USING ERRCODE = '{sqlstate}'"


async def test_a_deadlock_that_outlasts_the_user_locks_retries_answers_503(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    real_get = AsyncSession.get
    locks: list[int] = []

    async def get(self: AsyncSession, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("with_for_update"):  # sessions.lock_user's read, in its savepoint
            locks.append(1)
            await self.execute(text(f"DO $$ BEGIN {_raise('40P01')}; END $$"))
        return await real_get(self, *args, **kwargs)

    monkeypatch.setattr(AsyncSession, "get", get)
    form = {"username": user.email, "password": PASSWORD}
    refused = await client.post("/api/v1/auth/token", data=form)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"]
    assert len(locks) == sessions.LOCK_ATTEMPTS
    monkeypatch.undo()
    assert (await client.post("/api/v1/auth/token", data=form)).status_code == 200


@asynccontextmanager
async def _updates_of_users_fail(app: FastAPI, sqlstate: str) -> AsyncIterator[None]:
    """Every UPDATE of a user fails with `sqlstate`, as the server reports a conflict."""
    async with app.state.db.engine.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql"
                f" AS $$ BEGIN {_raise(sqlstate)}; END $$"
            )
        )
        await connection.execute(
            text("CREATE TRIGGER conflict BEFORE UPDATE ON users EXECUTE FUNCTION conflict()")
        )
    try:
        yield
    finally:
        async with app.state.db.engine.begin() as connection:
            await connection.execute(text("DROP TRIGGER conflict ON users"))
            await connection.execute(text("DROP FUNCTION conflict()"))


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
async def test_a_conflict_anywhere_in_a_requests_transaction_answers_503(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, sqlstate: str
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    async with _updates_of_users_fail(app, sqlstate):
        refused = await client.patch(
            "/api/v1/users/me", json={"name": "Renamed"}, headers=bearer(tokens)
        )
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"]
    renamed = await client.patch(
        "/api/v1/users/me", json={"name": "Renamed"}, headers=bearer(tokens)
    )
    assert renamed.json()["name"] == "Renamed"
