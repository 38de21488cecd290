"""Background job definitions. Each reloads what it needs and returns quietly when it is gone.

A module that defines jobs is listed in job_registry.JOB_MODULES.
"""

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel

from app.core import security
from app.core.config import Settings
from app.db.models import User
from app.db.session import Database
from app.services import email_templates
from app.services.job_registry import JobInfo, job
from app.services.mailer import Mail, Mailer


class UserMail(BaseModel):
    """The payload of a mail to one user."""

    user_id: uuid.UUID


async def _load_user(db: Database, user_id: uuid.UUID) -> User | None:
    # A session of its own, closed before the mail goes out: no connection is held during SMTP.
    async with db.transaction() as session:
        return await session.get(User, user_id)


async def _send_link(
    user: User,
    *,
    settings: Settings,
    mailer: Mailer,
    info: JobInfo,
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
        secret=settings.signing_key,
        ttl=ttl,
    )
    link = f"{settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"
    await mail_user(
        user, mailer=mailer, info=info, template=template, subject=subject, link=link, **values
    )


async def mail_user(
    user: User, *, mailer: Mailer, info: JobInfo, template: str, subject: str, **values: Any
) -> None:
    """Mail the user the email `template` (templates/email/TEMPLATE.txt and .html), rendered
    with the user's name and `values`; its Message-ID comes from the job's id."""
    text, html = await email_templates.render(template, name=user.name, **values)
    mail = Mail(
        to=user.email,
        subject=subject,
        text=text,
        html=html,
        message_id=str(info.id),
        request_id=info.request_id,
        user_id=str(user.id),
    )
    await mailer.send(mail)


@job(max_attempts=8)
async def send_welcome_email(
    payload: UserMail, *, db: Database, settings: Settings, mailer: Mailer, info: JobInfo
) -> None:
    user = await _load_user(db, payload.user_id)
    if user is None or user.is_verified:
        return
    hours = settings.verify_token_expire_hours
    await _send_link(
        user,
        settings=settings,
        mailer=mailer,
        info=info,
        purpose=security.VERIFY_EMAIL,
        bound_to=user.email,
        ttl=timedelta(hours=hours),
        path="/verify-email",
        template="welcome",
        subject="Welcome! Please confirm your email address",
        hours=hours,
    )


@job(max_attempts=8)
async def send_password_reset_email(
    payload: UserMail, *, db: Database, settings: Settings, mailer: Mailer, info: JobInfo
) -> None:
    user = await _load_user(db, payload.user_id)
    if user is None or not user.is_active:
        return
    minutes = settings.reset_token_expire_minutes
    await _send_link(
        user,
        settings=settings,
        mailer=mailer,
        info=info,
        purpose=security.RESET_PASSWORD,
        bound_to=user.hashed_password,  # any password change spends the link
        ttl=timedelta(minutes=minutes),
        path="/reset-password",
        template="password_reset",
        subject="Reset your password",
        minutes=minutes,
    )
