from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.errors import Responses


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The body of /health/ready, ready (200) or not (503): each part and how it fared."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description='"ok", or what failed: `{"database": "ok", "migrations": "ok"}`'
    )


NOT_READY: Responses = {
    503: {"model": Readiness, "description": "A part is not ready; it is named"}
}
