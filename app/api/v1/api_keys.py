import uuid

from fastapi import APIRouter, status

from app.dependencies import LoginUser, PaginationQuery, SessionDep
from app.schemas.api_keys import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from app.schemas.errors import INVALID_CURSOR, LOGIN_SESSION_REQUIRED, NOT_AUTHENTICATED, NOT_FOUND
from app.schemas.pagination import Page
from app.services import api_keys

router = APIRouter(
    prefix="/users/me/api-keys",
    tags=["api-keys"],
    responses=NOT_AUTHENTICATED | LOGIN_SESSION_REQUIRED,
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(data: ApiKeyCreate, user: LoginUser, session: SessionDep) -> ApiKeyCreated:
    """A new key; its secret is in this answer only. The owner is emailed about it."""
    key, secret = await api_keys.create(session, user_id=user.id, data=data)
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), secret=secret)


@router.get("", response_model=Page[ApiKeyRead], responses=INVALID_CURSOR)
async def list_api_keys(
    user: LoginUser, session: SessionDep, page: PaginationQuery
) -> Page[ApiKeyRead]:
    """The caller's keys that are not revoked, newest first."""
    keys, next_cursor = await api_keys.list_live(session, user_id=user.id, page=page)
    return Page[ApiKeyRead](items=keys, next_cursor=next_cursor)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def revoke_api_key(key_id: uuid.UUID, user: LoginUser, session: SessionDep) -> None:
    await api_keys.revoke(session, user_id=user.id, key_id=key_id)
