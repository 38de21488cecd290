from pydantic import BaseModel


class ErrorMessage(BaseModel):
    """Every error the service raises itself: `{"detail": "what went wrong"}`."""

    detail: str
