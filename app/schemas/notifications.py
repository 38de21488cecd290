from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints


class NotificationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class NotificationAccepted(BaseModel):
    status: str = "accepted"
