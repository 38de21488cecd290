"""Prometheus metrics: requests by route template, database pool, jobs.

With several worker processes (`serve --workers N`) PROMETHEUS_MULTIPROC_DIR is set and every
process writes its samples there; /metrics then adds them all up, whichever process answers.
"""

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of the pool",
    multiprocess_mode="livesum",
)
JOB_SECONDS = Histogram(
    "job_run_duration_seconds",
    "Time a job attempt ran",
    ["job", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_RETRIES = Counter("job_retries_total", "Job attempts that failed and will be retried", ["job"])

UNMATCHED = "<unmatched>"


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(seconds)


def track_pool(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(*_: object) -> None:
        POOL_IN_USE.inc()

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _checkin(*_: object) -> None:
        POOL_IN_USE.dec()


class _JobCounts(Collector):
    """Jobs by status, read from the database at scrape time (the same for every process)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("jobs", "Jobs by status", labels=["status"])
        for status, count in sorted(self.counts.items()):
            family.add_metric([status], count)
        yield family


def render(job_counts: dict[str, int]) -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    scrape = CollectorRegistry()
    scrape.register(_JobCounts(job_counts))
    return generate_latest(registry) + generate_latest(scrape)
