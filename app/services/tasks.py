"""Background job definitions. Each reloads what it needs and returns quietly when it is gone."""

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.core import security
from app.db.models import User
from app.services import lookup
from app.services.job_runner import JobContext
from app.services.jobs import registry
from app.services.mailer import Mail

_environment = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates" / "email"),
    autoescape=select_autoescape(["html"]),
)
# Loaded and compiled at import: reading and compiling them inside a job would block the loop.
TEMPLATES = {
    name: (_environment.get_template(f"{name}.txt"), _environment.get_template(f"{name}.html"))
    for name in ("welcome", "password_reset")
}


async def _load_user(ctx: JobContext, user_id: str) -> User | None:
    return await lookup.find_user(ctx.db, uuid.UUID(user_id))


async def _send_link(
    ctx: JobContext,
    user: User,
    *,
    purpose: str,
    bound_to: str,
    ttl: timedelta,
    path: str,
    template: str,
    subject: str,
    **values: Any,
) -> None:
    """Mail the user a signed link to one of the service's pages."""
    token = security.create_email_token(
        purpose=purpose,
        user_id=user.id,
        bound_to=bound_to,
        secret=ctx.settings.signing_key,
        ttl=ttl,
    )
    link = f"{ctx.settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"
    text, html = (part.render(name=user.name, link=link, **values) for part in TEMPLATES[template])
    mail = Mail(
        to=user.email,
        subject=subject,
        text=text,
        html=html,
        message_id=str(ctx.job_id),
        request_id=ctx.request_id,
    )
    await ctx.mailer.send(mail)


@registry.job(max_attempts=8)
async def send_welcome_email(ctx: JobContext, *, user_id: str) -> None:
    user = await _load_user(ctx, user_id)
    if user is None or user.is_verified:
        return
    hours = ctx.settings.verify_token_expire_hours
    await _send_link(
        ctx,
        user,
        purpose=security.VERIFY_EMAIL,
        bound_to=user.email,
        ttl=timedelta(hours=hours),
        path="/verify-email",
        template="welcome",
        subject="Welcome! Please confirm your email address",
        hours=hours,
    )


@registry.job(max_attempts=8)
async def send_password_reset_email(ctx: JobContext, *, user_id: str) -> None:
    user = await _load_user(ctx, user_id)
    if user is None or not user.is_active:
        return
    minutes = ctx.settings.reset_token_expire_minutes
    await _send_link(
        ctx,
        user,
        purpose=security.RESET_PASSWORD,
        bound_to=user.hashed_password,  # any password change spends the link
        ttl=timedelta(minutes=minutes),
        path="/reset-password",
        template="password_reset",
        subject="Reset your password",
        minutes=minutes,
    )
