import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from app.core import context
from app.core.logging import configure_logging
from tests.conftest import PASSWORD, SmtpSink, login
from tests.mail import token_in


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Logs rendered as in production, into a buffer; console logging again afterwards."""
    buffer = io.StringIO()
    configure_logging(level="DEBUG", json=True, stream=buffer)
    yield buffer
    configure_logging(level="INFO", json=False)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_production_lines_are_json_with_level_time_and_logger(json_log: io.StringIO) -> None:
    logging.getLogger("app.example").warning("disk %s is full", "sda1")
    [line] = lines(json_log)
    assert line["event"] == "disk sda1 is full"
    assert line["level"] == "warning"
    assert line["logger"] == "app.example"
    assert str(line["timestamp"]).endswith("Z")


def test_lines_carry_the_request_id_being_served(json_log: io.StringIO) -> None:
    token = context.request_id.set("req-123")
    try:
        logging.getLogger("app.example").info("inside a request")
    finally:
        context.request_id.reset(token)
    logging.getLogger("app.example").info("outside")
    inside, outside = lines(json_log)
    assert inside["request_id"] == "req-123"
    assert "request_id" not in outside


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJzdWIiOiIxIn0"),
        ("connecting to postgresql://app:hunter2@db/app", "hunter2"),
        ("GET /reset-password?token=s3cr3t-link&x=1", "s3cr3t-link"),
    ],
)
def test_secrets_in_messages_are_redacted(json_log: io.StringIO, message: str, secret: str) -> None:
    logging.getLogger("app.example").info(message)
    [line] = lines(json_log)
    assert secret not in json.dumps(line)
    assert "redacted" in str(line["event"])


def test_sensitive_fields_are_redacted(json_log: io.StringIO) -> None:
    logging.getLogger("app.example").info(
        "login", extra={"password": "hunter2", "refresh_token": "abc", "user": "ada"}
    )
    logged = json_log.getvalue()
    assert "hunter2" not in logged
    assert "abc" not in logged


async def test_an_account_flow_never_logs_a_password_or_token(
    client: httpx.AsyncClient, smtp: SmtpSink, json_log: io.StringIO
) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "quiet@example.com", "name": "Quiet", "password": PASSWORD},
    )
    assert response.status_code == 201
    verify_token = token_in((await smtp.wait_for(1))[0])
    tokens = await login(client, "quiet@example.com")
    await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await client.get(f"/verify-email?token={verify_token}")
    await client.post(
        "/api/v1/auth/token", data={"username": "quiet@example.com", "password": "wrong password"}
    )
    logged = json_log.getvalue()
    assert "POST /api/v1/auth/register 201" in logged  # the access log is there
    for secret in (
        PASSWORD,
        "wrong password",
        tokens["access_token"],
        tokens["refresh_token"],
        verify_token,
    ):
        assert secret not in logged
