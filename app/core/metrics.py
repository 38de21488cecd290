"""Prometheus metrics: requests by route template, the admission gate, database pool, jobs.

With several worker processes (`serve --workers N`) PROMETHEUS_MULTIPROC_DIR is set and every
process writes its samples there; /metrics then adds them all up, whichever process answers.
"""

import contextlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

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
# Gauges of a process's own state are summed over the live processes of a multi-worker server.
ADMISSION_LIMIT = Gauge(
    "admission_requests_limit",
    "Requests the admission gate lets in at once",
    multiprocess_mode="livesum",
)
ADMISSION_IN_FLIGHT = Gauge(
    "admission_requests_in_flight",
    "Requests admitted and not yet answered",
    multiprocess_mode="livesum",
)
ADMISSION_WAITING = Gauge(
    "admission_requests_waiting",
    "Requests queued at the admission gate",
    multiprocess_mode="livesum",
)
ADMISSION_REJECTED = Counter(
    "admission_rejected_requests",
    "Requests answered 503 because no slot came free within DB_POOL_TIMEOUT",
)
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of the pool",
    multiprocess_mode="livesum",
)
POOL_LIMIT = Gauge(
    "db_pool_connections_limit",
    "Database connections the pool may open (pool size plus overflow)",
    multiprocess_mode="livesum",
)
# `job_name`, not `job`: Prometheus gives every series the `job` label of its scrape target.
JOB_SECONDS = Histogram(
    "job_run_duration_seconds",
    "Time a job attempt ran",
    ["job_name", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_RETRIES = Counter(
    "job_retries_total", "Job attempts that failed and will be retried", ["job_name"]
)
PRUNED = Counter("pruned_rows_total", "Rows the retention job deleted", ["table"])

# What a Celery worker's scrape reports (family names: a counter's without _total): its jobs,
# not the API's requests, admission gate and pool, which would read 0 there.
JOB_FAMILIES = frozenset({"job_run_duration_seconds", "job_retries", "pruned_rows"})

UNMATCHED = "<unmatched>"  # every path no route template matches, under mounts too
OTHER_METHOD = "OTHER"  # a method outside the usual few


def scrape_authorized(authorization: str, token: str) -> bool:
    """Whether a scrape's Authorization header carries METRICS_TOKEN (none needed when unset),
    compared in constant time, so the answer's timing tells nothing about the token."""
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(seconds)


def track_pool(engine: AsyncEngine, *, limit: int) -> None:
    """Count the connections checked out of the engine's pool, which may open `limit`."""
    POOL_LIMIT.set(limit)

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(*_: object) -> None:
        POOL_IN_USE.inc()

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _checkin(*_: object) -> None:
        POOL_IN_USE.dec()


class JobGauges(Collector):
    """The jobs as the database has them at this scrape (the same whichever process answers)."""

    def __init__(
        self,
        *,
        by_status: Mapping[str, int],
        lag_seconds: float,
        backlog: int,
        recently_dead: Mapping[str, int],
        unknown_names: Mapping[str, int],
    ) -> None:
        self.by_status = by_status
        self.lag_seconds = lag_seconds
        self.backlog = backlog
        self.recently_dead = recently_dead
        self.unknown_names = unknown_names

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("jobs", "Unfinished jobs by status", labels=["status"])
        for status, count in sorted(self.by_status.items()):
            family.add_metric([status], count)
        yield family
        yield GaugeMetricFamily(
            "jobs_due_lag_seconds",
            "Since when the oldest pending job has been due (0: none is waiting)",
            value=self.lag_seconds,
        )
        yield GaugeMetricFamily(
            "jobs_outbox_backlog",
            "Due jobs nothing has taken yet: not claimed by the dispatcher, or not published "
            "to the broker by the relay",
            value=self.backlog,
        )
        dead = GaugeMetricFamily(
            "jobs_recently_dead",
            "Jobs that became dead within the last hour and were not retried since",
            labels=["job_name"],
        )
        for name, count in sorted(self.recently_dead.items()):
            dead.add_metric([name], count)
        yield dead
        unknown = GaugeMetricFamily(
            "jobs_unknown_name",
            "Queued jobs whose last attempt met a process that does not know their name (a "
            "deploy still rolling, or a job no code declares any more)",
            labels=["job_name"],
        )
        for name, count in sorted(self.unknown_names.items()):
            unknown.add_metric([name], count)
        yield unknown


class ReadinessGauge(Collector):
    """/health/ready's checks as the scrape found them: 1 ok, 0 failing."""

    def __init__(self, checks: Mapping[str, bool]) -> None:
        self.checks = checks

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "readiness_check_ok",
            "Whether a readiness check passes (1) or fails (0)",
            labels=["check"],
        )
        for check, ok in sorted(self.checks.items()):
            family.add_metric([check], 1 if ok else 0)
        yield family


def render(*scraped: Collector, only: frozenset[str] | None = None) -> bytes:
    """The process's (or all processes') metrics, of the families `only` names if given, and
    the figures read for this scrape."""
    registry: Collector
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        _forget_exited_processes(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        registry = CollectorRegistry()
        # prometheus_client leaves this constructor unannotated.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    if only is not None:
        registry = _Only(registry, only)
    scrape = CollectorRegistry()
    for collector in scraped:
        scrape.register(collector)
    return generate_latest(registry) + generate_latest(scrape)


class _Only(Collector):
    def __init__(self, collector: Collector, families: frozenset[str]) -> None:
        self.collector = collector
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return (m for m in self.collector.collect() if m.name in self.families)


def _forget_exited_processes(path: str) -> None:
    """Drops the live gauges (pool, admission gate) of worker processes that have exited.

    Otherwise a worker that crashed, and the one started in its place, would both be summed
    from then on, its last values forever; prometheus_client leaves this to the server, which
    for uvicorn has no hook for it.
    """
    for file in Path(path).glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):  # a concurrent scrape was first
                # prometheus_client leaves this function unannotated.
                multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # it exists, as another user
