"""The user lock that every change to sessions takes first: a deadlock the database breaks is
tried again; any other error is not."""

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.services import sessions
from tests.conftest import MakeUser


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _failing_first(
    monkeypatch: pytest.MonkeyPatch, session: AsyncSession, sqlstate: str, times: int
) -> list[int]:
    """Make the session's next `times` gets fail as the database would, then work."""
    calls: list[int] = []
    real_get = session.get

    async def get(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise DBAPIError("SELECT ... FOR UPDATE", {}, _Orig(sqlstate))
        return await real_get(*args, **kwargs)

    monkeypatch.setattr(session, "get", get)
    return calls


async def test_a_deadlock_on_the_user_lock_is_tried_again(
    app: FastAPI, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    async with app.state.db.transaction() as session:
        calls = _failing_first(monkeypatch, session, "40P01", times=2)
        locked = await sessions.lock_user(session, user.id)
    assert locked is not None
    assert locked.id == user.id
    assert len(calls) == 3


async def test_the_user_lock_gives_up_after_its_attempts(
    app: FastAPI, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    async with app.state.db.transaction() as session:
        calls = _failing_first(monkeypatch, session, "40001", times=sessions.LOCK_ATTEMPTS)
        with pytest.raises(DBAPIError):
            await sessions.lock_user(session, user.id)
    assert len(calls) == sessions.LOCK_ATTEMPTS


async def test_other_errors_on_the_user_lock_are_not_retried(
    app: FastAPI, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    async with app.state.db.transaction() as session:
        calls = _failing_first(monkeypatch, session, "57014", times=1)  # a statement timeout
        with pytest.raises(DBAPIError):
            await sessions.lock_user(session, user.id)
    assert len(calls) == 1
