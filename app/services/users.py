"""Accounts: registration, lookup, profile changes and superusers."""

import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import security
from app.core.errors import EmailTaken, InvalidEmailToken, NotFound, WrongPassword
from app.db.models import User
from app.db.session import Database
from app.schemas.users import UserCreate, UserRead, UserUpdate
from app.services import auth, idempotency, jobs, lookup, tasks


async def register(
    session: AsyncSession,
    data: UserCreate,
    *,
    idempotency_key: str | None = None,
    secret: str,
    idempotency_ttl: timedelta = timedelta(hours=24),
) -> User | dict[str, Any]:
    """Create an account; with an idempotency key, a retry returns the first response."""
    # Hash before touching the database, so no transaction stays open for the Argon2 work.
    hashed_password = await security.hash_password(data.password)
    claim = None
    if idempotency_key is not None:
        claim = await idempotency.claim(
            session,
            key=idempotency_key,
            fingerprint=security.fingerprint(data.model_dump_json().encode(), secret=secret),
            ttl=idempotency_ttl,
        )
        if claim.response_body is not None:
            return claim.response_body
    user = await _insert_user(
        session,
        email=User.normalize_email(data.email),
        name=data.name,
        hashed_password=hashed_password,
    )
    await jobs.enqueue(session, tasks.send_welcome_email, user_id=str(user.id))
    if claim is not None:
        idempotency.record_response(
            claim, status_code=201, body=UserRead.model_validate(user).model_dump(mode="json")
        )
    return user


async def _insert_user(session: AsyncSession, **values: Any) -> User:
    user = User(**values)
    session.add(user)
    try:
        # The unique constraint on email decides; a pre-check could not close the race.
        await session.flush()
    except IntegrityError as exc:
        raise EmailTaken() from exc
    return user


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email_matches(email)))


async def get_visible(db: Database, user_id: uuid.UUID, *, viewer: User) -> User:
    """A user as `viewer` may see them: themselves, or anyone for a superuser.

    To everyone else another account is simply not found, never confirmed to exist.
    """
    if user_id == viewer.id:
        return viewer
    if not viewer.is_superuser or (user := await lookup.find_user(db, user_id)) is None:
        raise NotFound("User not found")
    return user


async def list_page(session: AsyncSession, *, limit: int, offset: int) -> tuple[list[User], int]:
    total = await session.scalar(select(func.count()).select_from(User))
    users = await session.scalars(
        select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return list(users), total or 0


async def update_profile(session: AsyncSession, *, user: User, data: UserUpdate) -> User:
    """Change name and/or password; a new password ends every session of the user."""
    changes: dict[str, Any] = {}
    if data.name is not None:
        changes["name"] = data.name
    if data.password is not None:
        assert data.current_password is not None  # UserUpdate requires it with a password
        valid, _ = await security.verify_password(data.current_password, user.hashed_password)
        if not valid:
            raise WrongPassword()
        changes["hashed_password"] = await security.hash_password(data.password)
    stored = await session.get(User, user.id, with_for_update=True)
    if stored is None:
        raise NotFound("User not found")
    for field, value in changes.items():
        setattr(stored, field, value)
    if "hashed_password" in changes:
        await auth.revoke_all_sessions(session, user=stored)
    await session.flush()
    return stored


async def verify_email(session: AsyncSession, *, token: str, secret: str) -> User:
    """Mark the address verified; the token must be for the address the user still has."""
    user_id, bound_to = security.decode_email_token(
        token, purpose=security.VERIFY_EMAIL, secret=secret
    )
    user = await session.get(User, user_id, with_for_update=True)
    if user is None or bound_to != security.binding(user.email):
        raise InvalidEmailToken()
    user.is_verified = True
    await session.flush()
    return user


async def create_superuser(session: AsyncSession, data: UserCreate) -> User:
    return await _insert_user(
        session,
        email=User.normalize_email(data.email),
        name=data.name,
        hashed_password=await security.hash_password(data.password),
        is_superuser=True,
        is_verified=True,
    )


async def ensure_superuser(session: AsyncSession, *, email: str, password: str) -> bool:
    """Create the superuser unless the email exists; True when it was created."""
    if await get_by_email(session, email) is not None:
        return False
    data = UserCreate(email=email, password=password, name="Administrator")
    try:
        async with session.begin_nested():
            await create_superuser(session, data)
    except EmailTaken:
        return False  # another process created it a moment ago
    return True


async def set_active(
    session: AsyncSession, *, user_ids: Collection[uuid.UUID], active: bool
) -> list[User]:
    """Activate or deactivate accounts; deactivating ends every session. The users changed."""
    changed = await _lock_users(session, user_ids, User.is_active != active)
    for user in changed:
        user.is_active = active
        if not active:
            await auth.revoke_all_sessions(session, user=user)
    await session.flush()
    return changed


async def mark_verified(session: AsyncSession, *, user_ids: Collection[uuid.UUID]) -> list[User]:
    """Mark addresses verified by hand (an operator vouches for them). The users changed."""
    changed = await _lock_users(session, user_ids, User.is_verified.is_(False))
    for user in changed:
        user.is_verified = True
    await session.flush()
    return changed


async def _lock_users(
    session: AsyncSession, user_ids: Collection[uuid.UUID], condition: ColumnElement[bool]
) -> list[User]:
    # Locked in id order, so two operators acting on overlapping selections cannot deadlock.
    users = await session.scalars(
        select(User).where(User.id.in_(user_ids), condition).order_by(User.id).with_for_update()
    )
    return list(users)
