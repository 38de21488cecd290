"""The one Settings object, read from the environment and from `.env`."""

import os
import secrets
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from limits import parse_many
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

# Secrets that ship in examples and templates; production refuses to start with any of them.
PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "changeme", "secret", "dev"})
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


class ConfigError(ValueError):
    """The configuration cannot work; the message is one line meant for the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # On SIGTERM `serve` stops accepting and gives in-flight requests this long to finish;
    # then running jobs get JOB_SHUTDOWN_GRACE_SECONDS.
    shutdown_grace_seconds: int = Field(10, ge=0)
    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("data")

    database_url: str = "sqlite+aiosqlite:///./data/app.db"
    # A steady pool: overflow connections are opened and closed again under load, and each
    # opening costs a TCP (and TLS) handshake; the admission gate admits pool size + overflow.
    db_pool_size: int = Field(20, ge=1)
    db_max_overflow: int = Field(0, ge=0)
    db_pool_timeout: float = Field(5.0, gt=0)
    db_statement_timeout_ms: int = Field(10_000, ge=0)

    secret_key: str = ""
    access_token_expire_minutes: int = Field(15, ge=1)
    refresh_token_expire_days: int = Field(30, ge=1)
    idempotency_key_ttl_hours: int = Field(24, ge=1)

    # Empty: jobs run in the API process. redis://... or amqp://...: Celery workers run them.
    broker_url: str = ""
    job_concurrency: int = Field(8, ge=1)
    job_lease_seconds: float = Field(60.0, gt=0)
    job_poll_seconds: float = Field(1.0, gt=0)
    job_retry_base_seconds: float = Field(2.0, gt=0)
    job_retry_max_seconds: float = Field(600.0, gt=0)
    job_shutdown_grace_seconds: float = Field(10.0, ge=0)
    # The Celery relay hands a job to the broker again when no worker took it in this time.
    job_republish_seconds: float = Field(300.0, gt=0)

    # Empty SMTP_HOST: mails are written as .eml files under DATA_DIR/mail and logged.
    smtp_host: str = ""
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_tls: bool = True
    smtp_timeout_seconds: float = Field(10.0, gt=0)
    mail_from: str = "Accounts <no-reply@localhost>"

    verify_token_expire_hours: int = Field(48, ge=1)
    reset_token_expire_minutes: int = Field(60, ge=1)

    # Per client and per email, e.g. "10/minute" or "5/minute;50/day".
    rate_limit_enabled: bool = True
    rate_limit_register: str = "10/minute"
    rate_limit_token: str = "20/minute"
    rate_limit_forgot: str = "5/minute"
    # Where the counters live. Empty: the Redis of a redis:// BROKER_URL, else this process.
    redis_url: str = ""

    public_base_url: str = "http://127.0.0.1:8000"
    first_superuser_email: str = ""
    first_superuser_password: str = ""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Empty: console lines in development, JSON in production.
    log_format: Literal["", "console", "json"] = ""
    access_log: bool = True
    metrics_enabled: bool = True
    # Comma-separated. Browsers on these origins may call the API (bearer tokens, no cookies).
    cors_origins: Annotated[list[str], NoDecode] = []
    # Comma-separated Host header values to accept ("*.example.com" works); "*" accepts any.
    trusted_hosts: Annotated[list[str], NoDecode] = ["*"]

    @field_validator("cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("database_url")
    @classmethod
    def _require_async_driver(cls, url: str) -> str:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"DATABASE_URL is not a database URL: {url!r}") from exc
        backend, _, driver = parsed.drivername.partition("+")
        expected = ASYNC_DRIVERS.get(backend)
        if expected is None:
            raise ConfigError(
                f"DATABASE_URL: unsupported database {backend!r}; use SQLite or PostgreSQL"
            )
        if driver != expected:
            raise ConfigError(
                f"DATABASE_URL must use the async driver {backend}+{expected}://, "
                f"got {parsed.drivername}://"
            )
        return url

    @field_validator("rate_limit_register", "rate_limit_token", "rate_limit_forgot")
    @classmethod
    def _parse_rate_limit(cls, value: str, info: ValidationInfo) -> str:
        name = str(info.field_name).upper()
        try:
            items = parse_many(value)
        except ValueError:
            raise ConfigError(f"{name} is not a rate limit like 10/minute: {value!r}") from None
        if any(item.amount < 1 for item in items):
            raise ConfigError(f"{name} must allow at least 1 request: {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _require_redis_scheme(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"REDIS_URL must start with redis:// or rediss://, got {url!r}")
        return url

    @model_validator(mode="after")
    def _require_real_secret_in_production(self) -> "Settings":
        if self.environment == "production" and (
            self.secret_key in PLACEHOLDER_SECRETS or len(self.secret_key) < 32
        ):
            raise ConfigError(
                "SECRET_KEY must be set to a random value of at least 32 characters in production"
            )
        return self

    @model_validator(mode="after")
    def _first_superuser_is_usable(self) -> "Settings":
        email, password = self.first_superuser_email, self.first_superuser_password
        if bool(email) != bool(password):
            raise ConfigError("FIRST_SUPERUSER_EMAIL and FIRST_SUPERUSER_PASSWORD go together")
        if email:
            try:
                validate_email(email, check_deliverability=False)
            except EmailNotValidError as exc:
                raise ConfigError(f"FIRST_SUPERUSER_EMAIL is not an email address: {exc}") from None
            if not 8 <= len(password) <= 128:
                raise ConfigError("FIRST_SUPERUSER_PASSWORD needs 8 to 128 characters")
        return self

    @property
    def idempotency_key_ttl(self) -> timedelta:
        return timedelta(hours=self.idempotency_key_ttl_hours)

    @property
    def log_json(self) -> bool:
        return self.log_format == "json" or (
            self.log_format == "" and self.environment == "production"
        )

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def rate_limit_redis_url(self) -> str:
        """REDIS_URL, else a Redis broker's; empty: the counters live in this process."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    @cached_property
    def signing_key(self) -> str:
        """SECRET_KEY, or in development a key generated once and kept under DATA_DIR."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            # Several worker processes may start at once: write aside, then link into place,
            # which succeeds for exactly one of them.
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".secret_key.{os.getpid()}")
            draft.touch(mode=0o600)
            draft.write_text(secrets.token_urlsafe(48))
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text().strip()


def load_settings() -> Settings:
    """Read the settings, turning a validation failure into one line that names the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(message if name in message else f"{name}: {message}") from None
