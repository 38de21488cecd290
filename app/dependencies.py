"""Every Depends() provider, exported as Annotated aliases that read like plain types."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import Forbidden
from app.db.models import User
from app.db.session import Database
from app.schemas.auth import ForgotPasswordRequest
from app.schemas.users import UserCreate
from app.services import auth
from app.services.rate_limits import Action, RateLimits


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Paging past this is a mistake, and past 2^63 the database itself refuses the number.
MAX_OFFSET = 1_000_000_000
DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_db(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    """The request's transaction: committed on success, rolled back on error."""
    async with db.transaction() as session:
        yield session


# scope="function" ends the transaction before the response is sent, so a failed commit
# can never follow a success status, and the connection goes back to the pool early.
SessionDep = Annotated[AsyncSession, Depends(get_db, scope="function")]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


async def get_current_user(
    token: Annotated[str, Depends(oauth2_scheme)], db: DatabaseDep, settings: SettingsDep
) -> User:
    # One autocommit read: authentication never holds a pooled connection past itself.
    return await auth.authenticate(db, access_token=token, secret=settings.signing_key)


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise Forbidden()
    return user


SuperUser = Annotated[User, Depends(get_superuser)]


async def get_read_session(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    """An autocommit session for handlers that only read: no BEGIN/COMMIT round trips."""
    async with db.read_sessionmaker() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


# --- rate limits: each alias is the validated body or form, once it is within its limit --------
# The limit runs as the body's own dependency, before the session opens: a refused request
# costs no connection, and the body is validated once.


async def _check(request: Request, action: Action, email: str) -> None:
    rate_limits: RateLimits = request.app.state.rate_limits
    # Behind a proxy, uvicorn's proxy_headers has already put the real client here.
    client = request.client.host if request.client else "unknown"
    await rate_limits.check(action, client=client, email=email)


async def limit_register(data: UserCreate, request: Request) -> UserCreate:
    await _check(request, "register", data.email)
    return data


async def limit_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request
) -> OAuth2PasswordRequestForm:
    await _check(request, "token", form.username)
    return form


async def limit_forgot(data: ForgotPasswordRequest, request: Request) -> ForgotPasswordRequest:
    await _check(request, "forgot", data.email)
    return data


LimitedRegistration = Annotated[UserCreate, Depends(limit_register)]
LimitedLoginForm = Annotated[OAuth2PasswordRequestForm, Depends(limit_token)]
LimitedForgotPassword = Annotated[ForgotPasswordRequest, Depends(limit_forgot)]
