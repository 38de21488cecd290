"""The one Settings object, read from the environment and from `.env`."""

import ipaddress
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
    # On SIGTERM: in-flight requests get this long, then running jobs JOB_SHUTDOWN_GRACE_SECONDS.
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
    # DATABASE_URL goes through a transaction-mode pooler (PgBouncer, RDS Proxy, Supavisor):
    # no prepared statement outlives its transaction and no session state is relied on. LISTEN
    # then goes over DATABASE_LISTEN_URL, a direct connection; without one the poll finds jobs.
    db_transaction_pooler: bool = False
    database_listen_url: str = ""

    # A body is read whole before the request is admitted: larger ones get 413 unread, and
    # one not complete this long after its headers 408; the headers get as long (app/server.py).
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    request_body_timeout_seconds: float = Field(10.0, gt=0)

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
    # Retention: the periodic prune_history job (0: never; `python -m app prune` still works)
    # deletes succeeded jobs, and dead ones, this long after they finished.
    prune_interval_seconds: float = Field(3600.0, ge=0)
    job_retention_days: float = Field(14.0, ge=0)
    dead_job_retention_days: float = Field(90.0, ge=0)

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

    # Limits like "10/minute" or "5/minute;50/day"; app/services/rate_limits.py has the rules.
    rate_limit_enabled: bool = True
    # Every request, per client and per email.
    rate_limit_register: str = "10/minute"
    rate_limit_forgot: str = "5/minute"
    # Failed logins per (email, client), per client over all emails, per email over all clients.
    rate_limit_token: str = "5/minute;20/hour"
    rate_limit_token_client: str = "30/minute;300/hour"
    rate_limit_token_email: str = "100/hour"
    # Failed admin logins per (email, client); its own counters, with the two budgets above.
    rate_limit_admin_login: str = "5/minute;20/hour"
    # Failures per client and per user.
    rate_limit_refresh: str = "20/minute;200/hour"
    rate_limit_verify: str = "10/minute;50/hour"
    rate_limit_reset: str = "5/minute;20/hour"
    rate_limit_password_change: str = "5/minute;20/hour"
    # Redis keys start with this; deployments (or test runs) sharing one Redis keep apart.
    rate_limit_key_prefix: str = Field("rate-limit", min_length=1, pattern=r"^[\w.:-]+$")
    # Proxies whose X-Forwarded-For names the client (uvicorn's setting): addresses or
    # networks, comma-separated, or "*". Anyone else's header is ignored.
    forwarded_allow_ips: str = "127.0.0.1,::1"
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
    # Set: /metrics needs "Authorization: Bearer <token>". Production without it serves none.
    metrics_token: str = ""
    # Set: `python -m app worker` serves its jobs' metrics on this port (of HOST); 0: none.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
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

    @field_validator("database_listen_url")
    @classmethod
    def _listen_url_is_postgresql(cls, url: str) -> str:
        if url and not url.startswith("postgresql"):
            raise ConfigError("DATABASE_LISTEN_URL must be a postgresql:// URL")
        return url

    @field_validator(
        "rate_limit_register",
        "rate_limit_forgot",
        "rate_limit_token",
        "rate_limit_token_client",
        "rate_limit_token_email",
        "rate_limit_admin_login",
        "rate_limit_refresh",
        "rate_limit_verify",
        "rate_limit_reset",
        "rate_limit_password_change",
    )
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

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _parse_proxies(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part == "*" or part.startswith("unix:"):
                continue
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ConfigError(
                    f"FORWARDED_ALLOW_IPS: {part!r} is not an address, a network or *"
                ) from None
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
    def _require_smtp_in_production(self) -> "Settings":
        # Reset links written to files on the server would reach nobody, or the wrong reader.
        if self.environment == "production" and not self.smtp_host:
            raise ConfigError("SMTP_HOST must be set in production: emails carry login links")
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
        default = not self.log_format and self.environment == "production"
        return self.log_format == "json" or default

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def rate_limit_redis_url(self) -> str:
        """REDIS_URL, else a Redis broker's; empty: the counters live in this process."""
        redis_broker = self.broker_url.startswith(("redis://", "rediss://"))
        return self.redis_url or (self.broker_url if redis_broker else "")

    @property
    def metrics_withheld(self) -> bool:
        """Production serves no metrics without METRICS_TOKEN: its figures are not public."""
        return self.environment == "production" and not self.metrics_token

    @cached_property
    def signing_key(self) -> str:
        """SECRET_KEY, or in development a key generated once and kept under DATA_DIR."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            # Worker processes may start at once: write aside, link into place (one wins).
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
