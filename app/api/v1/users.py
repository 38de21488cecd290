import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.db.models import User
from app.dependencies import (
    MAX_OFFSET,
    CurrentUser,
    DatabaseDep,
    ReadSessionDep,
    SessionDep,
    SuperUser,
)
from app.schemas.users import UserPage, UserRead, UserUpdate
from app.services import users

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserRead)
async def read_me(user: CurrentUser) -> User:
    return user


@router.patch("/me", response_model=UserRead)
async def update_me(data: UserUpdate, user: CurrentUser, session: SessionDep) -> User:
    return await users.update_profile(session, user=user, data=data)


@router.get("/{user_id}", response_model=UserRead)
async def read_user(user_id: uuid.UUID, user: CurrentUser, db: DatabaseDep) -> User:
    return await users.get_visible(db, user_id, viewer=user)


@router.get("", response_model=UserPage)
async def list_users(
    _: SuperUser,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> UserPage:
    items, total = await users.list_page(session, limit=limit, offset=offset)
    return UserPage(items=[UserRead.model_validate(u) for u in items], total=total)
