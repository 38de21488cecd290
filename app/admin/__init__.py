"""The operators' admin UI at /admin (sqladmin): users, jobs and API keys, for active superusers
only."""

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.middleware import Middleware

from app.admin.api_keys import ApiKeyAdmin
from app.admin.auth import AdminAuth
from app.admin.headers import SecurityHeadersMiddleware
from app.admin.jobs import JobAdmin
from app.admin.origin import SameOriginMiddleware
from app.admin.templates import install_cursor_list, precompile
from app.admin.users import UserAdmin
from app.core import security
from app.core.config import Settings
from app.db.session import Database

BASE_URL = "/admin"


def mount_admin(app: FastAPI, db: Database, settings: Settings) -> None:
    admin = Admin(
        app,
        # A factory of its own: sqladmin reconfigures the one it is given (autoflush off). Its
        # pages only read, a statement at a time, on the engine in autocommit; writes go
        # through the actions, each in a Database.transaction() as the API's requests are.
        session_maker=async_sessionmaker(db.engine, expire_on_commit=False),
        base_url=BASE_URL,
        title="Accounts admin",
        authentication_backend=AdminAuth(db, settings, app.state.rate_limits, path=BASE_URL),
        middlewares=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(SameOriginMiddleware, public_base_url=settings.public_base_url),
        ],
    )
    page_key = security.purpose_key(settings.signing_key, security.PAGE_CURSORS)
    for view in (UserAdmin, JobAdmin, ApiKeyAdmin):
        admin.add_view(view.bound_to(db, page_key=page_key))
    install_cursor_list(admin.templates.env)
    precompile(admin.templates.env)
