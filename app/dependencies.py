"""Every Depends() provider, exported as Annotated aliases that read like plain types."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import metrics, security
from app.core.config import Settings
from app.core.errors import (
    Forbidden,
    InvalidCredentials,
    InvalidEmailToken,
    InvalidToken,
    LoginSessionRequired,
    NotAuthenticated,
    WrongPassword,
)
from app.core.single_flight import SingleFlight
from app.db.queries import Principal
from app.db.session import Database
from app.schemas.auth import (
    ForgotPasswordRequest,
    RefreshRequest,
    ResetPasswordRequest,
    VerifyRequest,
)
from app.schemas.users import UserCreate, UserUpdate
from app.services import auth, pagination
from app.services.job_stats import JobStats
from app.services.pagination import PageParams
from app.services.rate_limits import Guarded, RateLimits, client_bucket
from app.services.sessions import Client


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_db(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    """The request's transaction: committed on success, rolled back on error.

    The one way routes and services reach the database, reads included; the only exception is
    the read behind every bearer token (get_current_user).
    """
    async with db.transaction() as session:
        yield session


# scope="function" ends the transaction before the response is sent, so a failed commit
# can never follow a success status, and the connection goes back to the pool early.
SessionDep = Annotated[AsyncSession, Depends(get_db, scope="function")]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


async def get_current_user(
    token: Annotated[str, Depends(oauth2_scheme)], db: DatabaseDep, settings: SettingsDep
) -> Principal:
    """Who the bearer token (an access token or an API key) speaks for.

    The one read that skips the request's session (see app/db/queries.py): one autocommit
    round trip, so authentication never holds a pooled connection past itself.
    """
    return await auth.authenticate(db.engine, token=token, secret=settings.signing_key)


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_login_user(user: CurrentUser) -> Principal:
    """The caller, signed in with a login session: managing keys, sessions and the password
    needs one, so a leaked API key cannot take the account over."""
    if user.session_id is None:
        raise LoginSessionRequired()
    return user


LoginUser = Annotated[Principal, Depends(get_login_user)]


async def get_superuser(user: CurrentUser) -> Principal:
    if not user.is_superuser:
        raise Forbidden()
    return user


SuperUser = Annotated[Principal, Depends(get_superuser)]


async def get_client(request: Request) -> Client:
    # Behind a proxy, uvicorn's proxy_headers has already put the real client here.
    return Client(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ClientDep = Annotated[Client, Depends(get_client)]


async def get_page_params(
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=pagination.MAX_CURSOR_CHARS)] = None,
) -> PageParams:
    """`?limit=&cursor=` of every list, with the key that signs and checks its cursors."""
    key = security.purpose_key(settings.signing_key, security.PAGE_CURSORS)
    return PageParams(limit=limit, cursor=cursor, key=key)


PaginationQuery = Annotated[PageParams, Depends(get_page_params)]


# --- operations: /metrics and /health/ready, which anyone can reach -----------------------------


async def check_metrics_token(request: Request, settings: SettingsDep) -> None:
    """With METRICS_TOKEN set, a scrape must carry it as a bearer token."""
    authorization = request.headers.get("authorization", "")
    if not metrics.scrape_authorized(authorization, settings.metrics_token):
        raise NotAuthenticated()


metrics_token_required = Depends(check_metrics_token)


async def get_job_stats(request: Request) -> SingleFlight[JobStats]:
    stats: SingleFlight[JobStats] = request.app.state.job_stats
    return stats


async def get_readiness(request: Request) -> SingleFlight[dict[str, str]]:
    readiness: SingleFlight[dict[str, str]] = request.app.state.readiness
    return readiness


JobStatsDep = Annotated[SingleFlight[JobStats], Depends(get_job_stats)]
ReadinessDep = Annotated[SingleFlight[dict[str, str]], Depends(get_readiness)]


# --- rate limits: each alias is the validated body or form, once it is within its limit --------
# The limit runs as the body's own dependency, before the session opens: a refused request
# costs no connection and no password hashing, and the body is validated once. The guarded
# ones are yield dependencies: FastAPI throws the handler's error into them, so a failure is
# counted (and re-raised) where the limit was checked. scope="function" counts it before the
# response leaves, so the client's next attempt sees it.


def _rate_limits(request: Request) -> RateLimits:
    rate_limits: RateLimits = request.app.state.rate_limits
    return rate_limits


def _client(request: Request) -> str:
    # Behind a proxy in FORWARDED_ALLOW_IPS, uvicorn has already put the real client here.
    return client_bucket(request.client.host if request.client else "unknown")


async def limit_register(data: UserCreate, request: Request) -> UserCreate:
    await _rate_limits(request).check("register", client=_client(request), email=data.email)
    return data


async def limit_forgot(data: ForgotPasswordRequest, request: Request) -> ForgotPasswordRequest:
    await _rate_limits(request).check("forgot", client=_client(request), email=data.email)
    return data


async def limit_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request
) -> AsyncIterator[OAuth2PasswordRequestForm]:
    attempt = await _rate_limits(request).begin_login(
        "token", client=_client(request), email=form.username
    )
    async with attempt.counting(InvalidCredentials):
        yield form


async def limit_refresh(
    data: RefreshRequest, request: Request, session: SessionDep
) -> AsyncIterator[RefreshRequest]:
    attempt = await _rate_limits(request).begin("refresh", client=_client(request))
    if attempt.is_counted:  # only a client within its limit costs this read
        await attempt.for_target(await auth.refresh_token_owner(session, data.refresh_token))
    async with attempt.counting(InvalidToken):
        yield data


async def limit_verify(data: VerifyRequest, request: Request) -> AsyncIterator[VerifyRequest]:
    async with _email_link_attempt(request, data.token, security.VERIFY_EMAIL, "verify"):
        yield data


async def limit_reset(
    data: ResetPasswordRequest, request: Request
) -> AsyncIterator[ResetPasswordRequest]:
    async with _email_link_attempt(request, data.token, security.RESET_PASSWORD, "reset"):
        yield data


@asynccontextmanager
async def _email_link_attempt(
    request: Request, token: str, purpose: str, kind: Guarded
) -> AsyncIterator[None]:
    attempt = await _rate_limits(request).begin(kind, client=_client(request))
    settings: Settings = request.app.state.settings
    async with attempt.counting(InvalidEmailToken):
        # A forged or expired link fails here, before any database work or password hashing.
        user_id, _ = security.decode_email_token(
            token, purpose=purpose, secret=settings.signing_key
        )
        await attempt.for_target(str(user_id))
        yield


# The HTML pages behind the links render a refusal as a page, so they take the same limit as
# a block around the attempt (`async with attempt(token):`) instead of as their body.
LinkAttempt = Callable[[str], AbstractAsyncContextManager[None]]


async def get_verify_attempt(request: Request) -> LinkAttempt:
    return lambda token: _email_link_attempt(request, token, security.VERIFY_EMAIL, "verify")


async def get_reset_attempt(request: Request) -> LinkAttempt:
    return lambda token: _email_link_attempt(request, token, security.RESET_PASSWORD, "reset")


async def limit_profile_update(
    data: UserUpdate, user: CurrentUser, request: Request
) -> AsyncIterator[UserUpdate]:
    if data.password is None:  # only a password change checks a secret
        yield data
        return
    attempt = await _rate_limits(request).begin("password", client=_client(request))
    await attempt.for_target(str(user.id))
    async with attempt.counting(WrongPassword):
        yield data


LimitedRegistration = Annotated[UserCreate, Depends(limit_register)]
LimitedForgotPassword = Annotated[ForgotPasswordRequest, Depends(limit_forgot)]
LimitedLoginForm = Annotated[OAuth2PasswordRequestForm, Depends(limit_token, scope="function")]
LimitedRefresh = Annotated[RefreshRequest, Depends(limit_refresh, scope="function")]
LimitedVerify = Annotated[VerifyRequest, Depends(limit_verify, scope="function")]
LimitedReset = Annotated[ResetPasswordRequest, Depends(limit_reset, scope="function")]
LimitedProfileUpdate = Annotated[UserUpdate, Depends(limit_profile_update, scope="function")]
VerifyAttempt = Annotated[LinkAttempt, Depends(get_verify_attempt)]
ResetAttempt = Annotated[LinkAttempt, Depends(get_reset_attempt)]
