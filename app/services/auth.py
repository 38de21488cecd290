"""Sessions: login, access tokens, refresh-token rotation with reuse detection, logout.

A login starts a family of refresh tokens. Each refresh consumes the presented token and issues
the next one in the family; presenting a consumed token again means it was copied, so the whole
family is revoked (RFC 6819, 5.2.2.3).
"""

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import security
from app.core.config import Settings
from app.core.errors import (
    InactiveUser,
    InvalidCredentials,
    InvalidEmailToken,
    InvalidToken,
    RefreshTokenReused,
)
from app.db.base import utcnow
from app.db.models import RefreshToken, User
from app.db.session import Database
from app.schemas.auth import TokenPair
from app.services import jobs, lookup, tasks


async def check_password(db: Database, *, email: str, password: str) -> tuple[User, str | None]:
    """The active user these credentials belong to, and a fresh hash if theirs is outdated.

    The lookup and the Argon2 check run outside any transaction. An unknown email costs the
    same Argon2 work as a wrong password, so timing tells nothing about who has an account.
    """
    user = None
    if "\x00" not in email:  # PostgreSQL text cannot hold NUL: no such account, surely
        async with db.read_sessionmaker() as session:
            user = await session.scalar(select(User).where(User.email_matches(email)))
    if user is None:
        await security.burn_password_check(password)
        raise InvalidCredentials()
    valid, upgraded_hash = await security.verify_password(password, user.hashed_password)
    if not valid:
        raise InvalidCredentials()
    if not user.is_active:
        raise InactiveUser()
    return user, upgraded_hash


async def login(db: Database, *, email: str, password: str, settings: Settings) -> TokenPair:
    """Check the credentials, then open a session: only issuing the tokens writes."""
    user, upgraded_hash = await check_password(db, email=email, password=password)
    async with db.transaction() as session:
        if upgraded_hash is not None:
            await session.execute(
                update(User).where(User.id == user.id).values(hashed_password=upgraded_hash)
            )
        return await issue_tokens(session, user=user, settings=settings)


async def issue_tokens(
    session: AsyncSession, *, user: User, settings: Settings, family_id: uuid.UUID | None = None
) -> TokenPair:
    refresh_token = security.new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=security.hash_refresh_token(refresh_token),
            expires_at=utcnow() + timedelta(days=settings.refresh_token_expire_days),
        )
    )
    await session.flush()
    ttl = timedelta(minutes=settings.access_token_expire_minutes)
    access_token = security.create_access_token(
        user_id=user.id, token_version=user.token_version, secret=settings.signing_key, ttl=ttl
    )
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=int(ttl.total_seconds()),
    )


async def refresh(session: AsyncSession, *, refresh_token: str, settings: Settings) -> TokenPair:
    """Exchange a refresh token for a new pair in the same family."""
    token = await session.scalar(
        select(RefreshToken).where(
            RefreshToken.token_hash == security.hash_refresh_token(refresh_token)
        )
    )
    if token is None:
        raise InvalidToken()
    now = utcnow()
    if token.revoked_at is not None:
        await _revoke_family(session, token.family_id)
        raise RefreshTokenReused()
    if token.expires_at <= now:
        raise InvalidToken()
    # Conditional update: of two concurrent refreshes with one token, exactly one consumes it.
    consumed = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]
        await _revoke_family(session, token.family_id)
        raise RefreshTokenReused()
    user = await session.get(User, token.user_id)
    if user is None or not user.is_active:
        raise InvalidToken()
    return await issue_tokens(session, user=user, settings=settings, family_id=token.family_id)


async def logout(session: AsyncSession, *, user: User, refresh_token: str) -> None:
    """End the session the refresh token belongs to; unknown tokens are ignored."""
    family_id = await session.scalar(
        select(RefreshToken.family_id).where(
            RefreshToken.token_hash == security.hash_refresh_token(refresh_token),
            RefreshToken.user_id == user.id,
        )
    )
    if family_id is not None:
        await _revoke_family(session, family_id)


async def revoke_all_sessions(session: AsyncSession, *, user: User) -> None:
    """Revoke every refresh token and invalidate every access token of the user."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    user.token_version += 1


async def request_password_reset(session: AsyncSession, *, email: str) -> None:
    """Mail a reset link if an active account has this email; the caller learns nothing."""
    user = await session.scalar(select(User).where(User.email_matches(email)))
    if user is not None and user.is_active:
        await jobs.enqueue(session, tasks.send_password_reset_email, user_id=str(user.id))


async def reset_password(session: AsyncSession, *, token: str, password: str, secret: str) -> User:
    """Set a new password from a reset link, and end every session of the user."""
    user_id, bound_to = security.decode_email_token(
        token, purpose=security.RESET_PASSWORD, secret=secret
    )
    hashed_password = await security.hash_password(password)
    user = await session.get(User, user_id, with_for_update=True)
    # Bound to the old hash: once any new password is set, the link is spent.
    if user is None or not user.is_active or bound_to != security.binding(user.hashed_password):
        raise InvalidEmailToken()
    user.hashed_password = hashed_password
    await revoke_all_sessions(session, user=user)
    await session.flush()
    return user


async def authenticate(db: Database, *, access_token: str, secret: str) -> User:
    """The active user an access token speaks for."""
    user_id, token_version = security.decode_access_token(access_token, secret=secret)
    user = await lookup.find_user(db, user_id)
    if user is None or not user.is_active or user.token_version != token_version:
        raise InvalidToken()
    return user


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
