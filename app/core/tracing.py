"""OpenTelemetry tracing, switched on by the standard OTEL_* environment variables.

Tracing is on when they configure an exporter: OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_
variant), or OTEL_TRACES_EXPORTER other than `none`; OTEL_SDK_DISABLED=true turns it off. The
SDK reads everything else itself: the protocol, headers and timeout of the exporter, the
sampler (OTEL_TRACES_SAMPLER), the service name and resource, the batch processor's limits,
the propagators. Off, nothing here imports the SDK, an exporter or an instrumentation, and
every helper returns at its first line.

A process configures it once, from its environment, at start (`configure`); tests hand a
provider of their own to `use` instead, so no global provider outlives a test. The
instrumentations are given the provider explicitly, never the global one. The spans the
service makes itself (a job's attempt, an SMTP delivery) are in app.core.spans.
"""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.config import ConfigError
from app.core.redaction import redact_text

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer
    from sqlalchemy.ext.asyncio import AsyncEngine

NAME = "accounts-service"
# Probes and scrapes: a span each, every few seconds, that nobody looks at.
EXCLUDED_URLS = "/health/live,/health/ready,/metrics"

_provider: "TracerProvider | None" = None
_tracer: "Tracer | None" = None
_configured = False


def exporter_configured(environ: Mapping[str, str]) -> bool:
    """The rule of DESIGN.md: tracing is on when the OTEL_* variables configure an exporter."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


def exporters(environ: Mapping[str, str]) -> list["SpanExporter"]:
    """The exporters OTEL_TRACES_EXPORTER names (`otlp` by default); each reads its own
    OTEL_EXPORTER_OTLP_* variables. The OTLP protocol is http/protobuf unless told grpc."""
    chosen: list[SpanExporter] = []
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = name.strip()
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            chosen.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                chosen.append(GrpcExporter())
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                chosen.append(HttpExporter())
            else:
                raise ConfigError(f"OTLP protocol {protocol!r}: use http/protobuf or grpc")
        elif name not in ("", "none"):
            raise ConfigError(f"OTEL_TRACES_EXPORTER {name!r}: use otlp, console or none")
    return chosen


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Set tracing up for this process from its environment, once; True when it is on.

    A forked child (a Celery pool process) keeps its parent's provider: the batch processor
    restarts its export thread after a fork."""
    global _configured
    if _configured:
        return _provider is not None
    _configured = True
    if not exporter_configured(environ):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; our name only
    # replaces its `unknown_service`. TracerProvider reads OTEL_TRACES_SAMPLER, span limits.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: NAME}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # for any library that asks the global one
    use(provider)
    return True


def use(provider: "TracerProvider | None") -> None:
    """Trace with `provider` from now on (None: stop tracing). Tests use it directly."""
    global _provider, _tracer
    if provider is None and _provider is not None:
        _uninstrument_celery()  # its signal handlers hold the provider they were given
    if provider is not None:
        # Loading the propagators scans the installed packages' entry points: at start, not
        # on the event loop in the first request that enqueues a job.
        import opentelemetry.propagate  # noqa: F401
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(NAME)


def enabled() -> bool:
    return _provider is not None


def tracer() -> "Tracer | None":
    """The service's own tracer (its job and SMTP spans: app.core.spans); None when off."""
    return _tracer


def instrument_app(app: "FastAPI") -> None:
    """A server span per request (FastAPI's instrumentation), its query string redacted."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=EXCLUDED_URLS,
        exclude_spans=["receive", "send"],  # a span per ASGI message: noise
        server_request_hook=_redact_url,
    )


def _redact_url(span: Any, scope: dict[str, Any]) -> None:
    """Verification and reset links carry their token in the query string."""
    if not span.is_recording() or not scope.get("query_string"):
        return
    for key in ("http.target", "http.url", "url.full", "url.query"):
        value = span.attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, redact_text(value if key != "url.query" else f"?{value}"))


def instrument_engine(engine: "AsyncEngine") -> None:
    """A span per SQL statement (SQLAlchemy's instrumentation), under a span only: the idle
    polls of the dispatcher and the relay would otherwise be a trace each, every second.
    The statement is recorded as its SQL text; the engine never renders parameters into it."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    tracer = _ChildSpansOnly(_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"))
    meter = NoOpMeterProvider().get_meter(NAME)
    usage = meter.create_up_down_counter("db.client.connections.usage")
    # An async engine runs its statements on its sync engine: that is where the events are.
    # opentelemetry-instrumentation-sqlalchemy leaves this constructor unannotated.
    EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]


def instrument_celery() -> None:
    """Publish and run spans of Celery tasks (Celery's instrumentation), once per process."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    # opentelemetry-instrumentation-celery leaves this constructor unannotated.
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_provider)


def _uninstrument_celery() -> None:
    import sys

    if "opentelemetry.instrumentation.celery" in sys.modules:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        # Unannotated, as in instrument_celery(); a singleton, so this is the one instrumented.
        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def carrier() -> dict[str, str] | None:
    """The current trace context (traceparent, tracestate), to be stored with a job."""
    if _provider is None:
        return None
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def current_ids() -> tuple[str, str] | None:
    """The trace id and span id of the active span, as log lines show them."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


class _ChildSpansOnly:
    """A tracer that starts spans only under a valid current span (see instrument_engine)."""

    def __init__(self, tracer: "Tracer") -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry import trace

        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)


def flush() -> None:
    """Export what is still buffered, before the process goes."""
    if _provider is not None:
        _provider.force_flush()
