"""Signing in: login, the principal behind a bearer token, refresh-token rotation, logout.

Each refresh consumes the presented token and issues the next one of its session; presenting a
consumed token again means it was copied, so the whole session is ended (RFC 6819, 5.2.2.3).
"""

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core import security
from app.core.config import Settings
from app.core.errors import (
    InactiveUser,
    InvalidCredentials,
    InvalidEmailToken,
    InvalidToken,
    RefreshTokenReused,
)
from app.db import queries
from app.db.base import utcnow
from app.db.models import LoginSession, RefreshToken, User
from app.schemas.auth import TokenPair
from app.services import api_keys, jobs, sessions, tasks
from app.services.sessions import Client


async def check_password(
    session: AsyncSession, *, email: str, password: str
) -> tuple[User, str | None]:
    """The active user these credentials belong to, and a fresh hash if theirs is outdated.

    The read's transaction ends before the Argon2 check, so no pooled connection waits on it.
    An unknown email costs the same Argon2 work as a wrong password, so timing tells nothing
    about who has an account.
    """
    user = None
    if "\x00" not in email:  # PostgreSQL text cannot hold NUL: no such account, surely
        user = await session.scalar(select(User).where(User.email_matches(email)))
    await session.commit()
    if user is None:
        await security.burn_password_check(password)
        raise InvalidCredentials()
    valid, upgraded_hash = await security.verify_password(password, user.hashed_password)
    if not valid:
        raise InvalidCredentials()
    if not user.is_active:
        raise InactiveUser()
    return user, upgraded_hash


async def login(
    session: AsyncSession, *, email: str, password: str, client: Client, settings: Settings
) -> TokenPair:
    """Check the credentials, then open a session."""
    checked, upgraded_hash = await check_password(session, email=email, password=password)
    user = await sessions.lock_user(session, checked.id)
    # Checked again under the lock: deactivated, or the password changed, meanwhile.
    if user is None or user.hashed_password != checked.hashed_password:
        raise InvalidCredentials()
    if not user.is_active:
        raise InactiveUser()
    if upgraded_hash is not None:
        user.hashed_password = upgraded_hash
    return await sessions.open_session(session, user=user, client=client, settings=settings)


async def authenticate(engine: AsyncEngine, *, token: str, secret: str) -> queries.Principal:
    """Who a bearer token (an access token or an API key) speaks for; InvalidToken otherwise."""
    if token.startswith(security.API_KEY_PREFIX):
        return await api_keys.authenticate(engine, secret=token)
    claims = security.decode_access_token(token, secret=secret)
    principal = await queries.user_by_session(
        engine,
        user_id=claims.user_id,
        session_id=claims.session_id,
        token_version=claims.token_version,
    )
    if principal is None:
        raise InvalidToken()
    return principal


async def refresh_token_owner(session: AsyncSession, refresh_token: str) -> str | None:
    """Whose refresh token this is, revoked or not, so that its rate limit counts per user."""
    owner = await session.scalar(
        select(RefreshToken.user_id).where(
            RefreshToken.token_hash == security.hash_token(refresh_token)
        )
    )
    return None if owner is None else str(owner)


async def refresh(session: AsyncSession, *, refresh_token: str, settings: Settings) -> TokenPair:
    """Exchange a refresh token for a new pair in the same session."""
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == security.hash_token(refresh_token))
    )
    if token is None:
        raise InvalidToken()
    user = await sessions.lock_user(session, token.user_id)
    await session.refresh(token)  # as it is now that the user's sessions cannot change
    if token.revoked_at is not None:
        await _end_as_stolen(session, token)
    login_session = await session.get(LoginSession, token.session_id)
    if (
        user is None
        or not user.is_active
        or token.expires_at <= utcnow()
        or token.token_version != user.token_version  # issued before a password change
        or login_session is None
        or login_session.revoked_at is not None
    ):
        raise InvalidToken()
    await session.execute(
        update(RefreshToken).where(RefreshToken.id == token.id).values(revoked_at=utcnow())
    )
    return await sessions.issue_tokens(session, user=user, login=login_session, settings=settings)


async def _end_as_stolen(session: AsyncSession, token: RefreshToken) -> None:
    """A consumed token came back: whoever copied it is logged out, with the owner.

    The ending must outlive the failed request, so it is committed before the error is raised.
    """
    await sessions.end(session, token.session_id)
    await session.commit()
    raise RefreshTokenReused()


async def logout(session: AsyncSession, *, user_id: uuid.UUID, refresh_token: str) -> None:
    """End the session the refresh token belongs to; unknown tokens are ignored."""
    token = await session.scalar(
        select(RefreshToken).where(
            RefreshToken.token_hash == security.hash_token(refresh_token),
            RefreshToken.user_id == user_id,
        )
    )
    if token is not None:
        await sessions.lock_user(session, token.user_id)
        await sessions.end(session, token.session_id)


async def request_password_reset(session: AsyncSession, *, email: str) -> None:
    """Mail a reset link if an active account has this email; the caller learns nothing."""
    user = await session.scalar(select(User).where(User.email_matches(email)))
    if user is not None and user.is_active:
        payload = tasks.UserMail(user_id=user.id)
        await jobs.enqueue(session, tasks.send_password_reset_email, payload)


async def reset_password(session: AsyncSession, *, token: str, password: str, secret: str) -> User:
    """Set a new password from a reset link, and end every session of the user.

    The link is checked before any Argon2 work, so bad links cost nothing; it is bound to the
    hash it replaces, so once any new password is set it is spent.
    """
    user_id, bound_to = security.decode_email_token(
        token, purpose=security.RESET_PASSWORD, secret=secret
    )
    user = await session.get(User, user_id)
    if user is None or not user.is_active or bound_to != security.binding(user.hashed_password):
        raise InvalidEmailToken()
    await session.commit()  # end the read: no pooled connection waits while Argon2 runs
    hashed_password = await security.hash_password(password)
    user = await sessions.lock_user(session, user_id)
    if user is None or not user.is_active or bound_to != security.binding(user.hashed_password):
        raise InvalidEmailToken()  # spent by a reset that won the race
    user.hashed_password = hashed_password
    await sessions.end_all(session, user=user)
    await session.flush()
    return user
