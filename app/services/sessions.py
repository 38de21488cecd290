"""Login sessions: opening, rotating and ending them, and the lock every change takes first.

A session is what a login starts: a row that its refresh tokens belong to and its access
tokens name. Ending it (logout, the user ending it from another device, a password change)
stops its refresh and access tokens at once.

Lock order: every change to a user's sessions, tokens or password locks the user row first
(`lock_user`), then touches sessions and tokens. Login, refresh, logout, reset and password
change therefore serialise per user without deadlocks, and a session minted while the password
changes either ends with the change or is refused after it (its token version is stale).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import security
from app.core.config import Settings
from app.core.errors import NotFound
from app.db.base import utcnow
from app.db.errors import is_conflict
from app.db.models import LoginSession, RefreshToken, User
from app.schemas.auth import TokenPair
from app.services import pagination
from app.services.pagination import PageParams

LOCK_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Client:
    """Where a login comes from, as the user will see it in their list of sessions."""

    ip: str | None
    user_agent: str | None


async def lock_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user row, locked for the rest of the transaction, read afresh.

    By the lock order nothing is held while this waits, so a deadlock cannot involve it; should
    the database still break one (a lock taken elsewhere in another order), the wait is tried
    again instead of failing the request.
    """
    attempt = 1
    while True:
        try:
            async with session.begin_nested():
                return await session.get(
                    User, user_id, with_for_update=True, populate_existing=True
                )
        except DBAPIError as exc:
            if attempt == LOCK_ATTEMPTS or not is_conflict(exc):
                raise
            attempt += 1


async def open_session(
    session: AsyncSession, *, user: User, client: Client, settings: Settings
) -> TokenPair:
    """Start a session for a user locked by the caller, and issue its first tokens."""
    login = LoginSession(
        id=uuid.uuid4(),
        user_id=user.id,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:255] or None,
        expires_at=_refresh_expiry(settings),
    )
    session.add(login)
    return await issue_tokens(session, user=user, login=login, settings=settings)


async def issue_tokens(
    session: AsyncSession, *, user: User, login: LoginSession, settings: Settings
) -> TokenPair:
    """The next refresh token of a session, and an access token naming it."""
    refresh_token = security.new_token()
    now = utcnow()
    login.last_used_at = now
    login.expires_at = _refresh_expiry(settings)
    session.add(
        RefreshToken(
            user_id=user.id,
            session_id=login.id,
            token_hash=security.hash_token(refresh_token),
            token_version=user.token_version,
            expires_at=login.expires_at,
        )
    )
    await session.flush()
    ttl = timedelta(minutes=settings.access_token_expire_minutes)
    access_token = security.create_access_token(
        user_id=user.id,
        session_id=login.id,
        token_version=user.token_version,
        secret=settings.signing_key,
        ttl=ttl,
    )
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=int(ttl.total_seconds()),
    )


# Newest first, in ix_login_sessions_user_id_created_at_id (the user's sessions not ended)
# read backwards. Not by last use: a session refreshed while its owner pages would move.
SESSIONS_ORDER = pagination.Ordering(
    (LoginSession.created_at, LoginSession.id), descending=True, pinned=(LoginSession.user_id,)
)


def live_sessions(user_id: uuid.UUID) -> Select[LoginSession]:
    """The user's sessions that can still be used."""
    return select(LoginSession).where(
        LoginSession.user_id == user_id,
        LoginSession.revoked_at.is_(None),
        LoginSession.expires_at > utcnow(),
    )


async def list_live(
    session: AsyncSession, *, user_id: uuid.UUID, page: PageParams
) -> tuple[list[LoginSession], str | None]:
    return await pagination.paginate(
        session,
        live_sessions(user_id),
        ordering=SESSIONS_ORDER,
        params=page,
        scope=("sessions", str(user_id)),
    )


async def end_session(session: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """End one of the user's sessions; NotFound when it is not theirs or already ended."""
    await lock_user(session, user_id)
    ended = await _end(session, LoginSession.id == session_id, LoginSession.user_id == user_id)
    if not ended:
        raise NotFound("Session not found")


async def end(session: AsyncSession, login_session_id: uuid.UUID) -> None:
    """End a session whose user the caller has locked."""
    await _end(session, LoginSession.id == login_session_id)


async def end_all(session: AsyncSession, *, user: User) -> None:
    """End every session of a locked user and invalidate all their tokens at once."""
    await _end(session, LoginSession.user_id == user.id)
    user.token_version += 1


async def _end(session: AsyncSession, *conditions: ColumnElement[bool]) -> bool:
    now = utcnow()
    ended = list(
        await session.scalars(
            update(LoginSession)
            .where(LoginSession.revoked_at.is_(None), *conditions)
            .values(revoked_at=now)
            .returning(LoginSession.id)
        )
    )
    if ended:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.session_id.in_(ended), RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return bool(ended)


def _refresh_expiry(settings: Settings) -> datetime:
    return utcnow() + timedelta(days=settings.refresh_token_expire_days)
