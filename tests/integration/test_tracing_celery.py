"""A registration's trace goes on in a Celery worker process, exported over OTLP from there."""

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core.config import Settings
from tests.conftest import PASSWORD, SmtpSink
from tests.integration import conftest as integration
from tests.integration.conftest import Worker
from tests.tracing import OtlpReceiver, attributes, one, otlp, spans

__all__ = ["otlp", "spans"]


async def test_the_welcome_job_run_by_a_worker_joins_the_trace_of_the_registration(
    spans: InMemorySpanExporter,
    otlp: OtlpReceiver,
    celery_app: FastAPI,
    worker: Worker,
    smtp: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = integration.worker_env

    def traced_env(settings: Settings) -> dict[str, str]:
        return plain(settings) | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_SERVICE_NAME": "accounts-worker",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }

    monkeypatch.setattr(integration, "worker_env", traced_env)
    await worker.start()
    await worker.ready()
    transport = httpx.ASGITransport(app=celery_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        body = {"email": "worker-traced@example.com", "name": "Traced", "password": PASSWORD}
        assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
    await smtp.wait_for(1)
    [job] = await otlp.wait_for("send_welcome_email")
    [delivery] = await otlp.wait_for("smtp send")
    server = one(spans.get_finished_spans(), "POST /api/v1/auth/register")
    assert job.service == delivery.service == "accounts-worker"
    assert job.span.trace_id == server.context.trace_id.to_bytes(16, "big")
    assert job.span.parent_span_id == server.context.span_id.to_bytes(8, "big")
    assert delivery.span.parent_span_id == job.span.span_id
    [link] = job.span.links  # to Celery's own span of the delivery, which ends after the job's
    run = await otlp.wait_for_span(link.span_id)
    assert run.span.name == "run/jobs.run"
    assert attributes(job.span)["job.outcome"] == "succeeded"
    assert attributes(delivery.span)["server.address"] == "127.0.0.1"
