from typing import Annotated

from fastapi import APIRouter, Header, status

from app.db.models import User
from app.dependencies import (
    ClientDep,
    CurrentUser,
    LimitedForgotPassword,
    LimitedLoginForm,
    LimitedRefresh,
    LimitedRegistration,
    LimitedReset,
    LimitedVerify,
    SessionDep,
    SettingsDep,
)
from app.schemas.auth import RefreshRequest, ResetRequested, TokenPair
from app.schemas.errors import (
    INVALID_LINK,
    NOT_AUTHENTICATED,
    RATE_LIMITED,
    REGISTRATION_CONFLICT,
)
from app.schemas.users import UserRead
from app.services import auth, users

router = APIRouter(prefix="/auth", tags=["auth"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body returns the first response",
    ),
]


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=REGISTRATION_CONFLICT | RATE_LIMITED,
)
async def register(
    data: LimitedRegistration,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> UserRead:
    return await users.register(
        session,
        data,
        idempotency_key=idempotency_key,
        secret=settings.signing_key,
        idempotency_ttl=settings.idempotency_key_ttl,
    )


@router.post("/token", responses=NOT_AUTHENTICATED | RATE_LIMITED)
async def token(
    form: LimitedLoginForm, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> TokenPair:
    return await auth.login(
        session, email=form.username, password=form.password, client=client, settings=settings
    )


@router.post("/refresh", responses=NOT_AUTHENTICATED | RATE_LIMITED)
async def refresh(data: LimitedRefresh, session: SessionDep, settings: SettingsDep) -> TokenPair:
    return await auth.refresh(session, refresh_token=data.refresh_token, settings=settings)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_AUTHENTICATED)
async def logout(data: RefreshRequest, user: CurrentUser, session: SessionDep) -> None:
    """End the session of this refresh token: its refresh and access tokens stop at once."""
    await auth.logout(session, user_id=user.id, refresh_token=data.refresh_token)


@router.post("/verify", response_model=UserRead, responses=INVALID_LINK | RATE_LIMITED)
async def verify(data: LimitedVerify, session: SessionDep, settings: SettingsDep) -> User:
    return await users.verify_email(session, token=data.token, secret=settings.signing_key)


@router.post("/forgot-password", status_code=status.HTTP_202_ACCEPTED, responses=RATE_LIMITED)
async def forgot_password(data: LimitedForgotPassword, session: SessionDep) -> ResetRequested:
    await auth.request_password_reset(session, email=data.email)
    return ResetRequested()


@router.post("/reset-password", response_model=UserRead, responses=INVALID_LINK | RATE_LIMITED)
async def reset_password(data: LimitedReset, session: SessionDep, settings: SettingsDep) -> User:
    return await auth.reset_password(
        session, token=data.token, password=data.password, secret=settings.signing_key
    )
