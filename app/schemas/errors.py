"""The error body and the `responses=` each route declares, so a generated client knows them.

A route combines the constants of the errors it can give: `responses=NOT_AUTHENTICATED | NOT_FOUND`.
The answers every /api/v1 route can give (EVERY_REQUEST) are declared once, on its router.
"""

from typing import Any

from pydantic import BaseModel

Responses = dict[int | str, dict[str, Any]]


class ErrorMessage(BaseModel):
    """Every error the service raises itself: `{"detail": "what went wrong"}`."""

    detail: str


def _error(status: int, description: str, *, header: str | None = None) -> Responses:
    answer: dict[str, Any] = {"model": ErrorMessage, "description": description}
    if header is not None:
        answer["headers"] = {header: {"schema": {"type": "string"}}}
    return {status: answer}


NOT_AUTHENTICATED = _error(
    401,
    "Credentials or token missing, wrong or expired, or the account is disabled",
    header="WWW-Authenticate",
)
FORBIDDEN = _error(403, "Only a superuser may do this")
LOGIN_SESSION_REQUIRED = _error(403, "This needs a login session; an API key cannot do it")
NOT_FOUND = _error(404, "Not found, or not visible to the caller")
INVALID_LINK = _error(400, "The emailed link is invalid, has expired or was already used")
WRONG_PASSWORD = _error(400, "current_password is not the account's password")
REGISTRATION_CONFLICT = _error(
    409, "The email is taken, or the Idempotency-Key was used with another body or is in flight"
)
NOT_RETRYABLE = _error(409, "Only failed or dead jobs can be retried")
RATE_LIMITED = _error(429, "Too many attempts; see Retry-After", header="Retry-After")

# A list's 422 has two shapes: FastAPI's validation errors, or ours for a cursor that is not
# one of this list's (a string detail). Referenced by name: both schemas are always present.
INVALID_CURSOR: Responses = {
    422: {
        "description": "Invalid parameters, or a cursor that is not one of this list's",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/HTTPValidationError"},
                        {"$ref": "#/components/schemas/ErrorMessage"},
                    ]
                }
            }
        },
    }
}

# Given by the middleware in front of every route, whatever the route does.
EVERY_REQUEST = (
    _error(408, "The request body did not arrive in time")
    | _error(413, "The request body is too large")
    | _error(
        503,
        "The service is busy or its database is unavailable; see Retry-After",
        header="Retry-After",
    )
)
