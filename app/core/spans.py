"""The spans the service makes itself, where no instrumentation exists: a job's attempt and
an SMTP delivery. Both do nothing, at their first line, when tracing is off (app.core.tracing).
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from app.core import tracing

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

Finish = Callable[[str, str | None], None]


def _ignore(outcome: str, error_type: str | None) -> None:
    pass


@contextmanager
def job_attempt(
    name: str,
    *,
    job_id: object,
    attempt: int,
    max_attempts: int,
    trace_context: Mapping[str, str] | None,
) -> Iterator[Finish]:
    """A span for one attempt at a job, in the trace of the request that enqueued it.

    Its parent is the stored context, or the current span when that is of the same trace (a
    Celery run span carrying it). A current span of another trace (a Celery delivery whose
    publisher did not know the request) is linked. The caller reports the outcome through
    the function it is given: `finish("failed", "SMTPDataError")`."""
    tracer = tracing.tracer()
    if tracer is None:
        yield _ignore
        return
    from opentelemetry import propagate, trace

    current = trace.get_current_span().get_span_context()
    parent = propagate.extract(trace_context) if trace_context else None
    links = []
    if parent is not None and current.is_valid:
        if trace.get_current_span(parent).get_span_context().trace_id == current.trace_id:
            parent = None  # the current span is the closer parent
        else:
            links.append(trace.Link(current))
    attributes: dict[str, AttributeValue] = {
        "job.id": str(job_id),
        "job.name": name,
        "job.attempt": attempt,
        "job.max_attempts": max_attempts,
    }
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,  # exception messages may quote an address
    ) as span:

        def finish(outcome: str, error_type: str | None) -> None:
            span.set_attribute("job.outcome", outcome)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(trace.StatusCode.ERROR, error_type)

        yield finish


@contextmanager
def smtp_delivery(host: str, port: int) -> Iterator[None]:
    """A client span for handing one message to the SMTP server: the server and the result
    (`accepted`, or the error's type and reply code), never the addresses or the body."""
    tracer = tracing.tracer()
    if tracer is None:
        yield
        return
    from opentelemetry import trace

    attributes: dict[str, AttributeValue] = {
        "server.address": host,
        "server.port": port,
        "network.protocol.name": "smtp",
    }
    with tracer.start_as_current_span(
        "smtp send",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            error_type = type(exc).__name__
            span.set_attribute("smtp.result", error_type)
            span.set_attribute("error.type", error_type)
            code = getattr(exc, "code", None)
            if isinstance(code, int):
                span.set_attribute("smtp.response_code", code)
            span.set_status(trace.StatusCode.ERROR, error_type)
            raise
        span.set_attribute("smtp.result", "accepted")
