"""Accounts: registration, lookup, profile changes and superusers."""

import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import security
from app.core.errors import (
    EmailTaken,
    InvalidEmailToken,
    LoginSessionRequired,
    NotFound,
    WrongPassword,
)
from app.db.models import User
from app.db.queries import Principal
from app.schemas.users import UserCreate, UserRead, UserUpdate
from app.services import idempotency, jobs, pagination, sessions, tasks
from app.services.pagination import PageParams


async def register(
    session: AsyncSession,
    data: UserCreate,
    *,
    idempotency_key: str | None = None,
    secret: str,
    idempotency_ttl: timedelta = timedelta(hours=24),
) -> UserRead:
    """Create an account; with an idempotency key, a retry gets the first answer again."""
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
            return UserRead.model_validate(claim.response_body)
    user = await _insert_user(
        session,
        email=User.normalize_email(data.email),
        name=data.name,
        hashed_password=hashed_password,
    )
    await jobs.enqueue(session, tasks.send_welcome_email, tasks.UserMail(user_id=user.id))
    created = UserRead.model_validate(user)
    if claim is not None:
        idempotency.record_response(claim, status_code=201, body=created.model_dump(mode="json"))
    return created


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


async def get_visible(session: AsyncSession, user_id: uuid.UUID, *, viewer: Principal) -> User:
    """A user as `viewer` may see them: themselves, or anyone for a superuser.

    To everyone else another account is simply not found, never confirmed to exist.
    """
    user = None
    if user_id == viewer.id or viewer.is_superuser:
        user = await session.get(User, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


# Oldest first; the index ix_users_created_at_id serves it.
USERS_ORDER = pagination.Ordering((User.created_at, User.id))


async def list_users(session: AsyncSession, *, page: PageParams) -> tuple[list[User], str | None]:
    return await pagination.paginate(
        session, select(User), ordering=USERS_ORDER, params=page, scope=("users",)
    )


async def update_profile(session: AsyncSession, *, user: Principal, data: UserUpdate) -> User:
    """Change name and/or password; a new password ends every session of the user.

    A password change needs a login session and the current password, checked before the
    user row is locked, so no lock is held during Argon2 work.
    """
    checked_hash = hashed_password = None
    if data.password is not None:
        if user.session_id is None:
            raise LoginSessionRequired()
        assert data.current_password is not None  # UserUpdate requires it with a password
        stored = await session.get(User, user.id)
        if stored is None:
            raise NotFound("User not found")
        checked_hash = stored.hashed_password
        await session.commit()  # end the read: no pooled connection waits while Argon2 runs
        valid, _ = await security.verify_password(data.current_password, checked_hash)
        if not valid:
            raise WrongPassword()
        hashed_password = await security.hash_password(data.password)
    locked = await sessions.lock_user(session, user.id)
    if locked is None:
        raise NotFound("User not found")
    if data.name is not None:
        locked.name = data.name
    if hashed_password is not None:
        if locked.hashed_password != checked_hash:
            raise WrongPassword()  # changed by another request since it was checked
        locked.hashed_password = hashed_password
        await sessions.end_all(session, user=locked)
    await session.flush()
    return locked


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
            await sessions.end_all(session, user=user)
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
