"""Idempotency keys: a retried request gets the first response back and changes nothing.

The key row is written in the same transaction as the work it guards, so a failed request
leaves the key free and a committed one always has its response recorded.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from app.db.base import utcnow
from app.db.models import IdempotencyKey


async def claim(
    session: AsyncSession, *, key: str, fingerprint: str, ttl: timedelta
) -> IdempotencyKey:
    """Reserve the key for this request, or return the record of the request that used it.

    A record with a response_body is finished: the caller replays it instead of doing the work.
    """
    record = await session.get(IdempotencyKey, key)
    if record is not None and record.created_at < utcnow() - ttl:
        await session.delete(record)
        await session.flush()
        record = None
    if record is None:
        record = IdempotencyKey(key=key, fingerprint=fingerprint)
        try:
            async with session.begin_nested():
                session.add(record)
        except IntegrityError:
            # A concurrent request with the same key committed first; its row is visible now.
            record = await session.get(IdempotencyKey, key, populate_existing=True)
            if record is None:
                raise IdempotencyKeyInFlight() from None
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    return record


def record_response(record: IdempotencyKey, *, status_code: int, body: dict[str, Any]) -> None:
    record.status_code = status_code
    record.response_body = body
