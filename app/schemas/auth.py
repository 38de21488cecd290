from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.schemas.users import Password

OpaqueToken = Annotated[str, Field(min_length=1, max_length=512)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: OpaqueToken


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: OpaqueToken


class ForgotPasswordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, Field(max_length=254)]


class ResetPasswordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: OpaqueToken
    password: Password


class ResetRequested(BaseModel):
    """The same answer whether or not the email has an account, so it reveals nothing."""

    detail: str = "If an account has this email, a reset link is on its way"
