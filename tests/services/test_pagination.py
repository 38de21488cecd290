import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.errors import InvalidCursor
from app.db.models import User
from app.services.pagination import Ordering, PageParams, paginate
from tests.conftest import MakeUser

ORDER = Ordering((User.created_at, User.id))


async def test_a_cursor_is_only_good_with_the_key_that_signed_it(
    app: FastAPI, make_user: MakeUser
) -> None:
    for _ in range(3):
        await make_user()
    async with app.state.db.transaction() as session:
        first = PageParams(limit=1, cursor=None, key="key one")
        [user], cursor = await paginate(
            session, select(User), ordering=ORDER, params=first, scope=("users",)
        )
        assert cursor is not None
        same_key = PageParams(limit=1, cursor=cursor, key="key one")
        [after], _ = await paginate(
            session, select(User), ordering=ORDER, params=same_key, scope=("users",)
        )
        assert (after.created_at, after.id) > (user.created_at, user.id)
        other_key = PageParams(limit=1, cursor=cursor, key="key two")
        with pytest.raises(InvalidCursor):
            await paginate(
                session, select(User), ordering=ORDER, params=other_key, scope=("users",)
            )


def test_the_key_never_shows_in_a_repr() -> None:
    assert "s3cret" not in repr(PageParams(limit=1, cursor=None, key="s3cret"))
