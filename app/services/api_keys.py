"""Personal API keys: `Authorization: Bearer ak_...` acts as the key's owner.

The secret is shown once, when the key is made, and stored only as its SHA-256. A key can do
what its owner can, except manage keys, sessions and the password: those need a login session
(see dependencies.LoginUser), so a leaked key cannot lock its owner out or mint more keys.
"""

import uuid
from collections.abc import Collection
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core import security
from app.core.config import Settings
from app.core.errors import InvalidToken, NotFound
from app.db import queries
from app.db.base import utcnow
from app.db.models import ApiKey, User
from app.db.session import Database
from app.schemas.api_keys import ApiKeyCreate
from app.services import jobs, pagination
from app.services.job_registry import JobInfo, job
from app.services.mailer import Mailer
from app.services.pagination import PageParams
from app.services.tasks import mail_user


class ApiKeyMail(BaseModel):
    api_key_id: uuid.UUID


# last_used_at is a hint for the owner, not an audit log: written at most this often per key,
# so a busy key costs no write per request.
TOUCH_EVERY = timedelta(minutes=1)
# Shown in lists: the prefix and the first characters of the secret.
SHOWN_CHARS = 8


async def create(
    session: AsyncSession, *, user_id: uuid.UUID, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A new key and its secret, which is never stored; its owner is emailed about it."""
    secret = security.API_KEY_PREFIX + security.new_token()
    expires_at = None
    if data.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=data.expires_in_days)
    key = ApiKey(
        user_id=user_id,
        name=data.name,
        prefix=secret[: len(security.API_KEY_PREFIX) + SHOWN_CHARS],
        key_hash=security.hash_token(secret),
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    await jobs.enqueue(session, send_api_key_created_email, ApiKeyMail(api_key_id=key.id))
    return key, secret


# Newest first, in ix_api_keys_user_id_created_at_id (the owner's live keys) read backwards.
KEYS_ORDER = pagination.Ordering(
    (ApiKey.created_at, ApiKey.id), descending=True, pinned=(ApiKey.user_id,)
)


def live_keys(user_id: uuid.UUID) -> Select[ApiKey]:
    """The user's keys that are not revoked (expired ones included, marked)."""
    return select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))


async def list_live(
    session: AsyncSession, *, user_id: uuid.UUID, page: PageParams
) -> tuple[list[ApiKey], str | None]:
    return await pagination.paginate(
        session,
        live_keys(user_id),
        ordering=KEYS_ORDER,
        params=page,
        scope=("api-keys", str(user_id)),
    )


async def revoke(session: AsyncSession, *, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Revoke one of the user's keys; NotFound when it is not theirs or already revoked."""
    revoked = await session.scalar(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiKey.id)
    )
    if revoked is None:
        raise NotFound("API key not found")


async def revoke_many(session: AsyncSession, *, key_ids: Collection[uuid.UUID]) -> int:
    """An operator revokes keys, whoever owns them; how many were still live."""
    revoked = await session.scalars(
        update(ApiKey)
        .where(ApiKey.id.in_(key_ids), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiKey.id)
    )
    return len(revoked.all())


async def authenticate(engine: AsyncEngine, *, secret: str) -> queries.Principal:
    """The owner of a live key; InvalidToken otherwise."""
    found = await queries.user_by_api_key(engine, key_hash=security.hash_token(secret))
    now = utcnow()
    if found is None or (found.expires_at is not None and found.expires_at <= now):
        raise InvalidToken()
    if found.last_used_at is None or found.last_used_at < now - TOUCH_EVERY:
        assert found.principal.api_key_id is not None
        await queries.touch_api_key(engine, key_id=found.principal.api_key_id, now=now)
    return found.principal


@job(max_attempts=8)
async def send_api_key_created_email(
    payload: ApiKeyMail, *, db: Database, settings: Settings, mailer: Mailer, info: JobInfo
) -> None:
    """Tell the owner a key was made: a stolen session minting keys does not go unseen."""
    async with db.transaction() as session:  # closed before the mail goes out
        key = await session.get(ApiKey, payload.api_key_id)
        user = None if key is None else await session.get(User, key.user_id)
    if key is None or user is None or not user.is_active:
        return
    expiry = f" It expires on {key.expires_at:%Y-%m-%d %H:%M} UTC." if key.expires_at else ""
    await mail_user(
        user,
        mailer=mailer,
        info=info,
        template="notice",
        subject="A new API key was created for your account",
        paragraphs=[
            f"A new API key named \u201c{key.name}\u201d (it starts with {key.prefix}) was just"
            f" created for your account. It can act as you until it is revoked.{expiry}",
            "If it was not you, sign in, revoke the key, end the sessions you do not know,"
            " and change your password.",
        ],
        link=f"{settings.public_base_url.rstrip('/')}/docs",
        link_label="Manage your keys",
    )
