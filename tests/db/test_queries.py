"""The plain SQL of app/db/queries.py gives, on each backend, what the ORM reads."""

import uuid
from datetime import timedelta

from fastapi import FastAPI

from app.db import queries
from app.db.base import utcnow
from app.db.models import ApiKey, LoginSession, User
from tests.conftest import MakeUser


async def _session_for(app: FastAPI, user: User) -> LoginSession:
    login = LoginSession(user_id=user.id, expires_at=utcnow() + timedelta(days=1))
    async with app.state.db.transaction() as session:
        session.add(login)
    return login


async def test_user_by_session_reads_what_the_orm_reads(app: FastAPI, make_user: MakeUser) -> None:
    user = await make_user(
        email="grace@example.com", name="Grace", is_superuser=True, is_verified=True
    )
    login = await _session_for(app, user)
    async with app.state.db.transaction() as session:
        stored = await session.get(User, user.id)
    assert stored is not None

    principal = await queries.user_by_session(
        app.state.db.engine, user_id=user.id, session_id=login.id, token_version=0
    )

    assert principal == queries.Principal(
        id=stored.id,
        email=stored.email,
        name=stored.name,
        is_active=stored.is_active,
        is_verified=stored.is_verified,
        is_superuser=stored.is_superuser,
        created_at=stored.created_at,
        session_id=login.id,
    )
    assert type(principal.id) is uuid.UUID
    assert principal.created_at.tzinfo is not None


async def test_user_by_session_finds_nothing_for_a_stale_version_ended_session_or_inactive_user(
    app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    login = await _session_for(app, user)
    engine = app.state.db.engine

    async def found(**overrides: object) -> bool:
        asked: dict[str, object] = {"user_id": user.id, "session_id": login.id, "token_version": 0}
        return await queries.user_by_session(engine, **(asked | overrides)) is not None  # type: ignore[arg-type]

    assert await found()
    assert not await found(token_version=1)
    assert not await found(session_id=uuid.uuid4())
    assert not await found(user_id=(await make_user()).id)
    async with app.state.db.transaction() as session:
        stored = await session.get(LoginSession, login.id)
        assert stored is not None
        stored.revoked_at = utcnow()
    assert not await found()


async def test_user_by_api_key_and_touch_round_trip(app: FastAPI, make_user: MakeUser) -> None:
    user = await make_user()
    expires_at = utcnow() + timedelta(days=3)
    key = ApiKey(user_id=user.id, name="k", prefix="ak_x", key_hash="h" * 64, expires_at=expires_at)
    async with app.state.db.transaction() as session:
        session.add(key)
    engine = app.state.db.engine

    found = await queries.user_by_api_key(engine, key_hash="h" * 64)
    assert found is not None
    assert (found.principal.id, found.principal.api_key_id) == (user.id, key.id)
    assert found.principal.session_id is None
    assert abs(found.expires_at - expires_at) < timedelta(milliseconds=1)  # type: ignore[operator]
    assert found.last_used_at is None

    now = utcnow()
    await queries.touch_api_key(engine, key_id=key.id, now=now)
    again = await queries.user_by_api_key(engine, key_hash="h" * 64)
    assert again is not None
    assert again.last_used_at is not None
    assert abs(again.last_used_at - now) < timedelta(milliseconds=1)
    assert await queries.user_by_api_key(engine, key_hash="0" * 64) is None
