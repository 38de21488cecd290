from typing import Annotated, Any

from fastapi import APIRouter, Header, status

from app.db.models import User
from app.dependencies import (
    CurrentUser,
    DatabaseDep,
    LimitedForgotPassword,
    LimitedLoginForm,
    LimitedRegistration,
    SessionDep,
    SettingsDep,
)
from app.schemas.auth import RefreshRequest, ResetPasswordRequest, TokenPair, VerifyRequest
from app.schemas.errors import ErrorMessage
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
    responses={
        409: {
            "model": ErrorMessage,
            "description": "The email is taken, or the Idempotency-Key was used with another body",
        },
        429: {"model": ErrorMessage, "description": "Too many attempts; see Retry-After"},
    },
)
async def register(
    data: LimitedRegistration,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> User | dict[str, Any]:
    return await users.register(
        session,
        data,
        idempotency_key=idempotency_key,
        secret=settings.signing_key,
        idempotency_ttl=settings.idempotency_key_ttl,
    )


@router.post("/token")
async def token(form: LimitedLoginForm, db: DatabaseDep, settings: SettingsDep) -> TokenPair:
    return await auth.login(db, email=form.username, password=form.password, settings=settings)


@router.post("/refresh")
async def refresh(data: RefreshRequest, session: SessionDep, settings: SettingsDep) -> TokenPair:
    return await auth.refresh(session, refresh_token=data.refresh_token, settings=settings)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(data: RefreshRequest, user: CurrentUser, session: SessionDep) -> None:
    await auth.logout(session, user=user, refresh_token=data.refresh_token)


@router.post("/verify", response_model=UserRead)
async def verify(data: VerifyRequest, session: SessionDep, settings: SettingsDep) -> User:
    return await users.verify_email(session, token=data.token, secret=settings.signing_key)


@router.post("/forgot-password", status_code=status.HTTP_202_ACCEPTED)
async def forgot_password(data: LimitedForgotPassword, session: SessionDep) -> dict[str, str]:
    await auth.request_password_reset(session, email=data.email)
    return {"detail": "If an account has this email, a reset link is on its way"}


@router.post("/reset-password", response_model=UserRead)
async def reset_password(
    data: ResetPasswordRequest, session: SessionDep, settings: SettingsDep
) -> User:
    return await auth.reset_password(
        session, token=data.token, password=data.password, secret=settings.signing_key
    )
