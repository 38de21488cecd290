"""Fixtures of the reliability and scale suites (`make reliability`, `make scale-test`).

Everything runs as real processes on this machine, on a PostgreSQL cluster and Redis servers
of the suite's own: the machine's shared PostgreSQL (5432) and Redis (6379) are never
stopped, restarted or even used.
"""

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from reliability import results
from reliability.harness import Deployment, deployment
from reliability.postgres import PgCluster, private_cluster


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


@pytest.fixture
def deploy(
    request: pytest.FixtureRequest, tmp_path: Path, pg_cluster: PgCluster
) -> Iterator[Deployment]:
    """A fresh database on the shared private cluster, an SMTP sink, and no process yet."""
    with deployment(request.node.name, tmp_path, pg_cluster) as running:
        yield running


@pytest.fixture(scope="module")
def deploy_module(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster
) -> Iterator[Deployment]:
    """The same, shared by the tests of one module."""
    name = request.module.__name__.rpartition(".")[2]
    with deployment(name, tmp_path_factory.mktemp(name), pg_cluster) as running:
        yield running
