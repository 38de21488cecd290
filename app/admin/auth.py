"""Who may use the admin: active superusers, by email and password.

The signed session cookie holds only the user's id and token version. Every request loads the
user again, so deactivating an admin, taking away superuser, or changing their password (which
bumps the token version) ends their admin session at the next click.
"""

import uuid
from typing import Any

from sqladmin.authentication import AuthenticationBackend
from starlette.requests import Request

from app.core import security
from app.core.config import Settings
from app.core.errors import InvalidCredentials, NotAuthenticated, TooManyRequests
from app.db.models import User
from app.db.session import Database
from app.services import auth
from app.services.rate_limits import RateLimits, client_bucket

SESSION_COOKIE = "admin_session"
# Every response signs the cookie afresh: this is how long an idle admin stays logged in.
SESSION_MAX_AGE_S = 8 * 3600


class AdminAuth(AuthenticationBackend):
    def __init__(
        self, db: Database, settings: Settings, rate_limits: RateLimits, *, path: str
    ) -> None:
        super().__init__(
            secret_key=security.purpose_key(settings.signing_key, security.ADMIN_COOKIE),
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE_S,
            path=path,
            # sqladmin's actions are GET links: a strict cookie is never sent along with a
            # request that another site starts, so no other page can trigger them.
            same_site="strict",
            https_only=settings.public_base_url.startswith("https://"),
        )
        self.db = db
        self.rate_limits = rate_limits

    async def login(self, request: Request) -> bool:
        form = await request.form()
        email, password = form.get("username"), form.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return False
        client = client_bucket(request.client.host if request.client else "unknown")
        try:
            # The API's rules in counters of its own: the admin login is no second way to guess
            # passwords, and guesses at the API cannot lock the operators out of the admin.
            attempt = await self.rate_limits.begin_login("admin", client=client, email=email)
            async with attempt.counting(InvalidCredentials), self.db.transaction() as session:
                user, _ = await auth.check_password(session, email=email, password=password)
        except (TooManyRequests, NotAuthenticated):
            return False
        if not user.is_superuser:
            return False
        request.session.clear()
        request.session.update({"user_id": str(user.id), "token_version": user.token_version})
        return True

    async def logout(self, request: Request) -> bool:
        request.session.clear()
        return True

    async def authenticate(self, request: Request) -> bool:
        user_id = _parse_uuid(request.session.get("user_id"))
        if user_id is not None:
            async with self.db.transaction() as session:
                user = await session.get(User, user_id)
            if (
                user is not None
                and _may_administer(user)
                and user.token_version == request.session.get("token_version")
            ):
                return True
        request.session.clear()
        return False


def _may_administer(user: User) -> bool:
    return user.is_active and user.is_superuser


def _parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None
