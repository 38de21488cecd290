"""The operators' admin UI at /admin (sqladmin): users and jobs, for active superusers only."""

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.middleware import Middleware

from app.admin.auth import AdminAuth
from app.admin.headers import SecurityHeadersMiddleware
from app.admin.jobs import JobAdmin
from app.admin.templates import precompile
from app.admin.users import UserAdmin
from app.core.config import Settings
from app.db.session import Database

BASE_URL = "/admin"


def mount_admin(app: FastAPI, db: Database, settings: Settings) -> None:
    admin = Admin(
        app,
        # A factory of its own: sqladmin reconfigures the one it is given (autoflush off), and
        # its pages only read, so they run in autocommit like the API's reads. Writes go
        # through the actions, which use the app's transactions.
        session_maker=async_sessionmaker(db.engine, expire_on_commit=False),
        base_url=BASE_URL,
        title="Accounts admin",
        authentication_backend=AdminAuth(db, settings, app.state.rate_limits, path=BASE_URL),
        middlewares=[Middleware(SecurityHeadersMiddleware)],
    )
    for view in (UserAdmin, JobAdmin):
        admin.add_view(view.bound_to(db))
    precompile(admin.templates.env)
