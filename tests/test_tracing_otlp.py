"""Traces leave the process over OTLP/HTTP, as the SDK's exporter sends them to a collector."""

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from app.core import tracing
from tests.conftest import PASSWORD, SmtpSink
from tests.tracing import OtlpReceiver, attributes, otlp

__all__ = ["otlp"]


@pytest.fixture
def exported(otlp: OtlpReceiver) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "accounts-api"}))
    exporter = OTLPSpanExporter(endpoint=f"{otlp.url}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    tracing.use(provider)
    yield provider
    tracing.use(None)
    provider.shutdown()


@pytest.fixture
def app(exported: TracerProvider, app: FastAPI) -> FastAPI:
    return app


async def test_a_registration_reaches_the_collector_as_one_trace(
    client: httpx.AsyncClient, smtp: SmtpSink, otlp: OtlpReceiver
) -> None:
    body = {"email": "exported@example.com", "name": "Exported", "password": PASSWORD}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
    await smtp.wait_for(1)
    [server] = await otlp.wait_for("POST /api/v1/auth/register")
    [job] = await otlp.wait_for("send_welcome_email")
    [delivery] = await otlp.wait_for("smtp send")
    assert server.service == job.service == "accounts-api"
    assert job.span.trace_id == delivery.span.trace_id == server.span.trace_id
    assert job.span.parent_span_id == server.span.span_id
    assert delivery.span.parent_span_id == job.span.span_id
    assert attributes(job.span)["job.outcome"] == "succeeded"
    assert attributes(delivery.span)["smtp.result"] == "accepted"
