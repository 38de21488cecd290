"""Keyset pagination for every list: a page continues after the last row the previous one had.

A page costs the same at any depth (the query seeks in the ordering's index instead of
skipping rows with OFFSET) and nothing counts the table. The cursor names the last row's
ordering values, so rows inserted meanwhile never shift a page: each row already there is seen
once. It is signed (HMAC) together with the list and the filter it was made for, so a client can
neither forge a position nor carry a cursor over to another list or filter.
"""

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.types import TypeDecorator

from app.core.errors import InvalidCursor

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_CURSOR_CHARS = 512  # ours stay under 300 (a 100-character job name); longer is not one
MAC_BYTES = 16  # 128 bits: forging one by chance is out of reach, and the cursor stays short

M = TypeVar("M")


@dataclass(frozen=True)
class PageParams:
    """What a client asked for (`limit`, `cursor`), with the key its cursors are signed with."""

    limit: int
    cursor: str | None
    key: str = field(repr=False)


@dataclass(frozen=True)
class Ordering:
    """The columns a list is ordered by, ending in a unique one so that the order is total.

    `pinned` are columns the list's filter holds to one value, leading the filter's index
    (pinned..., columns...); the order names them too, so it is that index's order.
    """

    columns: tuple[InstrumentedAttribute[Any], ...]
    descending: bool = False
    pinned: tuple[InstrumentedAttribute[Any], ...] = ()


def page_query(
    query: Select[M], ordering: Ordering, *, limit: int, after: Sequence[Any] | None
) -> Select[M]:
    """The statement of one page: one row more than asked for, to tell if there is a next page.

    `after` is the last row's values of `ordering.columns`, compared as one row value: with the
    filter's `pinned = ?` in front, both backends seek straight to it in the index.
    """
    columns = ordering.columns
    if after is not None:
        position = tuple_(*(literal(v, c.type) for v, c in zip(after, columns, strict=True)))
        row = tuple_(*columns)
        query = query.where(row < position if ordering.descending else row > position)
    order = [c.desc() if ordering.descending else c.asc() for c in ordering.pinned + columns]
    return query.order_by(*order).limit(limit + 1)


async def paginate(
    session: AsyncSession,
    query: Select[M],
    *,
    ordering: Ordering,
    params: PageParams,
    scope: Sequence[str | None],
) -> tuple[list[M], str | None]:
    """One page of `query`'s rows and the cursor of the next (None on the last page).

    `scope` names the list and its filter values: a cursor is only valid for the same scope.
    """
    signer = _Signer(params.key, scope)
    after = None if params.cursor is None else _decode(signer, params.cursor, ordering)
    statement = page_query(query, ordering, limit=params.limit, after=after)
    rows: list[M] = list(await session.scalars(statement))
    if len(rows) <= params.limit:
        return rows, None
    last = rows[params.limit - 1]
    values = [getattr(last, column.key) for column in ordering.columns]
    return rows[: params.limit], signer.sign(json.dumps([_dump(v) for v in values]).encode())


class _Signer:
    def __init__(self, key: str, scope: Sequence[str | None]) -> None:
        self._key = key.encode()
        self._scope = json.dumps(list(scope)).encode()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, self._scope + b"\n" + payload, hashlib.sha256)[:MAC_BYTES]

    def sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(self._mac(payload) + payload).rstrip(b"=").decode()

    def verify(self, cursor: str) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor() from None
        mac, payload = raw[:MAC_BYTES], raw[MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidCursor()
        return payload


def _decode(signer: _Signer, cursor: str, ordering: Ordering) -> list[Any]:
    payload = signer.verify(cursor)
    try:
        values = json.loads(payload)
        if not isinstance(values, list) or len(values) != len(ordering.columns):
            raise ValueError("wrong shape")
        return [_load(v, _python_type(c)) for v, c in zip(values, ordering.columns, strict=True)]
    except (ValueError, TypeError):
        # Signed by us, so only a change of the ordering's columns can land here.
        raise InvalidCursor() from None


def _python_type(column: InstrumentedAttribute[Any]) -> type:
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # its own python_type is `object`
        sql_type = sql_type.impl_instance
    python_type: type = sql_type.python_type
    return python_type


def _dump(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _load(value: Any, python_type: type) -> Any:
    if python_type is datetime:
        return datetime.fromisoformat(value)
    if python_type is uuid.UUID:
        return uuid.UUID(value)
    if not isinstance(value, python_type):
        raise TypeError(f"{value!r} is not a {python_type.__name__}")
    return value
