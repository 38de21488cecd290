"""Fixtures of the reliability and scale suites (`make reliability`, `make scale-test`).

Everything runs as real processes on this machine, on a PostgreSQL cluster and Redis servers
of the suite's own: the machine's shared PostgreSQL (5432) and Redis (6379) are never
stopped, restarted or even used.
"""

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from reliability import results
from reliability.harness import Deployment, deployment
from reliability.postgres import PgCluster, private_cluster
from tests.pgbouncer import PgBouncer


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault injection (make reliability)")
    config.addinivalue_line("markers", "scale: scale-out proof (make scale-test)")
    # A SIGTERM (a CI timeout, say) unwinds the fixtures, so no server or cluster outlives us.
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if results.LINES:
        terminalreporter.section("reliability results")
        for text in results.LINES:
            terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster shared by the scenarios that do not restart it."""
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer | None]:
    """RELIABILITY_PGBOUNCER=1: a PgBouncer in transaction mode in front of the cluster, with
    PGBOUNCER_POOL_SIZE server connections, which every service goes through."""
    if os.environ.get("RELIABILITY_PGBOUNCER", "").lower() not in {"1", "true", "yes"}:
        yield None
        return
    pool_size = int(os.environ.get("PGBOUNCER_POOL_SIZE", "10"))
    with PgBouncer(pg_cluster.url("postgres"), pool_size=pool_size) as bouncer:
        yield bouncer


@pytest.fixture
def deploy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pg_cluster: PgCluster,
    pg_bouncer: PgBouncer | None,
) -> Iterator[Deployment]:
    """A fresh database on the shared private cluster, an SMTP sink, and no process yet."""
    with deployment(request.node.name, tmp_path, pg_cluster, pg_bouncer) as running:
        yield running


@pytest.fixture(scope="module")
def deploy_module(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_cluster: PgCluster,
    pg_bouncer: PgBouncer | None,
) -> Iterator[Deployment]:
    """The same, shared by the tests of one module."""
    name = request.module.__name__.rpartition(".")[2]
    with deployment(name, tmp_path_factory.mktemp(name), pg_cluster, pg_bouncer) as running:
        yield running
