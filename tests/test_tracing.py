"""Tracing: when it is on, what one registration's trace holds, and what no span ever holds."""

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from app.core import tracing
from app.core.config import ConfigError, Settings
from app.core.logging import configure_logging
from tests.conftest import PASSWORD, SmtpSink, login
from tests.mail import path_and_query, token_in
from tests.tracing import attrs, named, one, spans

__all__ = ["spans"]  # the fixture, for this module's tests

ROOT = Path(__file__).resolve().parents[1]
REGISTER = "POST /api/v1/auth/register"


@pytest.fixture
async def app(spans: InMemorySpanExporter, app: FastAPI) -> FastAPI:
    """The conftest's app, built once the test provider is in place."""
    return app


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "accounts"}, False),  # a name alone exports nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_tracing_is_on_when_the_variables_configure_an_exporter(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.exporter_configured(environ) is on


def test_the_otlp_protocol_is_http_unless_grpc_is_asked_for() -> None:
    [http] = tracing.exporters({})
    [grpc] = tracing.exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    [traces_grpc] = tracing.exporters(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        }
    )
    assert isinstance(http, HttpExporter)
    assert isinstance(grpc, GrpcExporter)
    assert isinstance(traces_grpc, GrpcExporter)
    for exporter in (http, grpc, traces_grpc):
        exporter.shutdown()
    with pytest.raises(ConfigError):
        tracing.exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError):
        tracing.exporters({"OTEL_TRACES_EXPORTER": "zipkin"})


OFF_PROBE = """
import asyncio, sys, httpx
from app.core.config import Settings
from app.main import create_app
import app.worker

async def main():
    app = create_app(Settings(_env_file=None, database_url=sys.argv[1], environment="test"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/health/live")).status_code == 200

asyncio.run(main())
# redis-py imports opentelemetry.sdk.metrics, when installed, for metrics of its own.
heavy = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "opentelemetry.proto",
    "grpc",
    "google.protobuf",
)
print(sorted(m for m in sys.modules if m.startswith(heavy)))
"""


def test_with_no_exporter_configured_nothing_heavy_is_imported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    url = f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}"
    probe = [sys.executable, "-c", OFF_PROBE, url]
    off = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip().splitlines()[-1] == "[]", off.stdout
    # The probe can tell: with an exporter configured, the same start imports them.
    env["OTEL_TRACES_EXPORTER"] = "console"
    on = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "opentelemetry.sdk.trace" in on.stdout.strip().splitlines()[-1]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging(level="DEBUG", json=True, stream=buffer)
    yield buffer
    configure_logging(level="INFO", json=False)


def test_log_lines_carry_the_ids_of_the_active_span(
    spans: InMemorySpanExporter, json_log: io.StringIO
) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("app.example").info("inside a span")
    logging.getLogger("app.example").info("outside")
    inside, outside = (json.loads(line) for line in json_log.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside


async def register(client: httpx.AsyncClient, email: str) -> None:
    body = {"email": email, "name": "Traced", "password": PASSWORD}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201


async def test_a_registration_trace_holds_its_statements_job_attempt_and_smtp_delivery(
    client: httpx.AsyncClient, smtp: SmtpSink, spans: InMemorySpanExporter, settings: Settings
) -> None:
    await register(client, "traced@example.com")
    await smtp.wait_for(1)
    finished = await _until_finished(spans, "smtp send")
    server = one(finished, REGISTER)
    trace_id = server.context.trace_id
    statements = [s for s in finished if "db.statement" in attrs(s)]
    assert all(s.context.trace_id == trace_id for s in statements)
    by_request = [
        str(attrs(s)["db.statement"])
        for s in statements
        if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    assert any(sql.startswith("INSERT INTO users") for sql in by_request)
    assert any(sql.startswith("INSERT INTO jobs") for sql in by_request)
    assert not any("traced@example.com" in str(attrs(s)) for s in statements)

    job = one(finished, "send_welcome_email")
    assert job.context.trace_id == trace_id
    assert job.parent is not None
    assert job.parent.span_id == server.context.span_id
    assert attrs(job)["job.attempt"] == 1
    assert attrs(job)["job.outcome"] == "succeeded"
    assert attrs(job)["job.id"]
    delivery = one(finished, "smtp send")
    assert delivery.parent is not None
    assert delivery.parent.span_id == job.context.span_id
    assert attrs(delivery)["server.address"] == settings.smtp_host
    assert attrs(delivery)["server.port"] == settings.smtp_port
    assert attrs(delivery)["smtp.result"] == "accepted"


async def test_every_attempt_of_a_retried_job_joins_the_trace_of_its_request(
    client: httpx.AsyncClient, smtp: SmtpSink, spans: InMemorySpanExporter
) -> None:
    smtp.refuse_with = "451 4.3.0 Try again later"
    await register(client, "retried@example.com")
    await _until_finished(spans, "smtp send")
    smtp.refuse_with = None
    await smtp.wait_for(1)
    finished = await _until_finished(spans, "send_welcome_email", count=2)
    server = one(finished, REGISTER)
    first, second = sorted(named(finished, "send_welcome_email"), key=lambda s: s.start_time or 0)
    for attempt in (first, second):
        assert attempt.context.trace_id == server.context.trace_id
        assert attempt.parent is not None
        assert attempt.parent.span_id == server.context.span_id
    assert (attrs(first)["job.attempt"], attrs(second)["job.attempt"]) == (1, 2)
    assert attrs(first)["job.outcome"] == "failed"
    assert attrs(first)["error.type"] == "SMTPDataError"
    assert attrs(second)["job.outcome"] == "succeeded"
    refused = [s for s in named(finished, "smtp send") if attrs(s)["smtp.result"] != "accepted"]
    assert attrs(refused[0])["smtp.response_code"] == 451


async def test_no_span_carries_a_password_token_secret_or_address(
    client: httpx.AsyncClient, smtp: SmtpSink, spans: InMemorySpanExporter, settings: Settings
) -> None:
    email = "secretive@example.com"
    await register(client, email)
    [welcome] = await smtp.wait_for(1)
    tokens = await login(client, email)
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200
    assert (await client.get(path_and_query(_link(welcome)))).status_code == 200
    forgot = await client.post("/api/v1/auth/forgot-password", json={"email": email})
    assert forgot.status_code == 202
    [_, reset_mail] = await smtp.wait_for(2)
    new_password = "another-Passw0rd-entirely"
    reset = await client.post(
        "/api/v1/auth/reset-password",
        json={"token": token_in(reset_mail), "password": new_password},
    )
    assert reset.status_code == 200
    finished = await _until_finished(spans, "send_password_reset_email")
    secrets = {
        "password": PASSWORD,
        "new password": new_password,
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "rotated refresh token": refreshed.json()["refresh_token"],
        "verification token": token_in(welcome),
        "reset token": token_in(reset_mail),
        "secret key": settings.secret_key,
        "address": email,
    }
    everything = "\n".join(_everything_in(span) for span in finished)
    assert "GET /verify-email" in everything  # the page of the emailed link was traced
    leaked = [what for what, value in secrets.items() if value in everything]
    assert leaked == []


def _link(message: object) -> str:
    from tests.mail import link_in

    assert hasattr(message, "get_body")
    return link_in(message)  # type: ignore[arg-type]


def _everything_in(span: ReadableSpan) -> str:
    parts = [span.name, str(span.status.description), json.dumps(dict(span.attributes or {}))]
    parts += [f"{event.name} {dict(event.attributes or {})}" for event in span.events]
    parts += [str(dict(link.attributes or {})) for link in span.links]
    parts.append(json.dumps(dict(span.resource.attributes)))
    return " ".join(parts)


async def _until_finished(
    spans: InMemorySpanExporter, name: str, count: int = 1
) -> tuple[ReadableSpan, ...]:
    """The finished spans, once `count` named `name` are among them (jobs end after mail)."""
    import asyncio

    async with asyncio.timeout(15):
        while len(named(spans.get_finished_spans(), name)) < count:
            await asyncio.sleep(0.02)
    return spans.get_finished_spans()


async def test_statements_are_traced_only_under_a_span(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    """The idle polls of the dispatcher and the relay make no traces of their own."""
    async with app.state.db.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert [s for s in spans.get_finished_spans() if "db.statement" in attrs(s)] == []
    tracer = tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("work") as work:
        async with app.state.db.engine.connect() as connection:
            await connection.execute(text("SELECT 2"))
    [statement] = [s for s in spans.get_finished_spans() if "db.statement" in attrs(s)]
    assert attrs(statement)["db.statement"] == "SELECT 2"
    assert statement.parent is not None
    assert statement.parent.span_id == work.get_span_context().span_id
