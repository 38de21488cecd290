from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app.core.errors import AppError
from app.dependencies import ResetAttempt, SessionDep, SettingsDep, VerifyAttempt
from app.schemas.auth import ResetPasswordRequest
from app.services import auth, users

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

# The token travels in the URL: never leak it to another site, never be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Token = Annotated[str, Query(max_length=512)]


def _page(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, template, values, status_code=status_code, headers=SECURITY_HEADERS
    )


def _refusal(request: Request, title: str, exc: AppError) -> HTMLResponse:
    """An AppError as a page, with its headers (a 429's Retry-After)."""
    response = _page(
        request, "message.html", exc.status_code, title=title, message=exc.message, error=True
    )
    response.headers.update(exc.response_headers or {})
    return response


@router.get("/verify-email", response_class=HTMLResponse)
async def verify_email(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    attempt: VerifyAttempt,
    token: Token = "",
) -> HTMLResponse:
    try:
        async with attempt(token):  # the API's verify limits: a failure counts, 429 refuses
            user = await users.verify_email(session, token=token, secret=settings.signing_key)
    except AppError as exc:
        return _refusal(request, "Email not confirmed", exc)
    return _page(
        request,
        "message.html",
        title="Email confirmed",
        message=f"Thank you, {user.name}: {user.email} is confirmed.",
    )


@router.get("/reset-password", response_class=HTMLResponse)
async def reset_password_form(request: Request, token: Token = "") -> HTMLResponse:
    return _page(request, "reset_password.html", title="Choose a new password", token=token)


@router.post("/reset-password", response_class=HTMLResponse)
async def reset_password(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    attempt: ResetAttempt,
    token: Annotated[str, Form(max_length=512)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> HTMLResponse:
    try:
        data = ResetPasswordRequest(token=token, password=password)
    except ValidationError:
        return _page(
            request,
            "reset_password.html",
            422,
            title="Choose a new password",
            token=token,
            error="The password needs 8 to 128 characters.",
        )
    try:
        async with attempt(data.token):  # the API's reset limits, checked before any Argon2
            await auth.reset_password(
                session, token=data.token, password=data.password, secret=settings.signing_key
            )
    except AppError as exc:
        return _refusal(request, "Password not changed", exc)
    return _page(
        request,
        "message.html",
        title="Password changed",
        message="Your new password is set. Every session was signed out; log in again.",
    )
