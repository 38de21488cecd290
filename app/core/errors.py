"""Domain errors. Each carries its HTTP status; one handler in app.main renders them all."""

from typing import ClassVar


class AppError(Exception):
    status_code: ClassVar[int] = 400
    detail: ClassVar[str] = "Bad request"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str | None = None) -> None:
        self.message = detail or self.detail
        super().__init__(self.message)

    @property
    def response_headers(self) -> dict[str, str] | None:
        """The class's headers; a subclass overrides this when one instance knows more."""
        return self.headers


class NotAuthenticated(AppError):
    status_code = 401
    detail = "Not authenticated"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(NotAuthenticated):
    detail = "Incorrect email or password"


class InvalidToken(NotAuthenticated):
    detail = "Invalid or expired token"


class RefreshTokenReused(InvalidToken):
    pass


class InactiveUser(NotAuthenticated):
    detail = "This account is disabled"


class Forbidden(AppError):
    status_code = 403
    detail = "Not enough privileges"


class LoginSessionRequired(Forbidden):
    detail = "This needs a login session; an API key cannot do it"


class NotFound(AppError):
    status_code = 404
    detail = "Not found"


class EmailTaken(AppError):
    status_code = 409
    detail = "A user with this email already exists"


class WrongPassword(AppError):
    status_code = 400
    detail = "Current password is incorrect"


class IdempotencyKeyReused(AppError):
    status_code = 409
    detail = "This Idempotency-Key was used with a different request body"


class IdempotencyKeyInFlight(AppError):
    status_code = 409
    detail = "A request with this Idempotency-Key is still being processed; retry shortly"


class TooManyRequests(AppError):
    status_code = 429
    detail = "Too many requests; try again later"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(f"Too many requests; try again in {retry_after} seconds")
        self.retry_after = retry_after

    @property
    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(AppError):
    status_code = 503
    detail = "The database is unavailable; try again shortly"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class ServiceBusy(AppError):
    status_code = 503
    detail = "The service is busy; try again shortly"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class InvalidCursor(AppError):
    status_code = 422
    detail = (
        "Invalid cursor: it is malformed, was altered, or belongs to another list or filter; "
        "pass the next_cursor of a page of this same list, or start without one"
    )


# Both are answered before the body is read to its end, so the connection cannot be reused.
class BodyTooLarge(AppError):
    status_code = 413
    detail = "The request body is too large"
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class BodyTimeout(AppError):
    status_code = 408
    detail = "The request body did not arrive in time"
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class JobNotRetryable(AppError):
    status_code = 409
    detail = "Only failed or dead jobs can be retried"


class InvalidEmailToken(AppError):
    status_code = 400
    detail = "This link is invalid, has expired or was already used"
