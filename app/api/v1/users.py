import uuid

from fastapi import APIRouter

from app.db.models import User
from app.db.queries import Principal
from app.dependencies import (
    CurrentUser,
    LimitedProfileUpdate,
    PaginationQuery,
    SessionDep,
    SuperUser,
)
from app.schemas.errors import (
    FORBIDDEN,
    INVALID_CURSOR,
    LOGIN_SESSION_REQUIRED,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    RATE_LIMITED,
    WRONG_PASSWORD,
)
from app.schemas.pagination import Page
from app.schemas.users import UserRead
from app.services import users

router = APIRouter(prefix="/users", tags=["users"], responses=NOT_AUTHENTICATED)


@router.get("/me", response_model=UserRead)
async def read_me(user: CurrentUser) -> Principal:
    return user


@router.patch(
    "/me",
    response_model=UserRead,
    # 403: a password change needs a login session; 404: the account was deleted meanwhile.
    responses=WRONG_PASSWORD | LOGIN_SESSION_REQUIRED | NOT_FOUND | RATE_LIMITED,
)
async def update_me(data: LimitedProfileUpdate, user: CurrentUser, session: SessionDep) -> User:
    return await users.update_profile(session, user=user, data=data)


@router.get("/{user_id}", response_model=UserRead, responses=NOT_FOUND)
async def read_user(user_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> User:
    return await users.get_visible(session, user_id, viewer=user)


@router.get("", response_model=Page[UserRead], responses=FORBIDDEN | INVALID_CURSOR)
async def list_users(_: SuperUser, session: SessionDep, page: PaginationQuery) -> Page[UserRead]:
    items, next_cursor = await users.list_users(session, page=page)
    return Page[UserRead](items=items, next_cursor=next_cursor)
