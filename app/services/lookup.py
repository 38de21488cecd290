"""Reads on the hot paths, apart so that authentication, accounts and job definitions can all
use them without importing each other."""

import uuid

from sqlalchemy import bindparam, select

from app.db.models import User
from app.db.session import Database

_USER_BY_ID = select(User.__table__).where(User.__table__.c.id == bindparam("user_id"))


async def find_user(db: Database, user_id: uuid.UUID) -> User | None:
    """A user by id in one round trip, outside any session: the read behind every request
    with an access token and every job about a user. The user is detached; a transaction that
    changes it loads its own."""
    row = await db.fetch_one(_USER_BY_ID, user_id=user_id)
    return None if row is None else User(**row)
