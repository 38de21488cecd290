"""A deployment of the service for one scenario, and the accounting after its stream."""

import asyncio
import contextlib
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.core.config import Settings
from reliability.load import RegistrationStream
from reliability.postgres import PgCluster
from reliability.processes import ApiServer, CeleryWorker, RedisServer, service_env
from reliability.results import line, record
from reliability.smtp import SmtpSink, smtp_server
from reliability.verify import account, job_evidence, mail_delays, wait_settled
from tests.pgbouncer import PgBouncer

# The services run at the default settings (service_env).
LEASE = timedelta(seconds=Settings.model_fields["job_lease_seconds"].default)
REPUBLISH_S: float = Settings.model_fields["job_republish_seconds"].default
# Long enough for a message the broker lost, which waits for the relay's republish sweep.
SETTLE_TIMEOUT_S = REPUBLISH_S + 120.0
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT")  # a log line of the app, not a traceback's


@dataclass
class Deployment:
    """PostgreSQL database, SMTP sink, and the processes of one scenario."""

    name: str
    workdir: Path
    cluster: PgCluster
    database_url: str
    sink: SmtpSink
    smtp_port: int
    settings: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    apis: list[ApiServer] = field(default_factory=list)
    workers: list[CeleryWorker] = field(default_factory=list)
    # Set when the services go through a PgBouncer: the database straight on the cluster,
    # which the accounting reads and the services LISTEN on.
    direct_url: str = ""

    @property
    def dsn(self) -> str:
        url = self.direct_url or self.database_url
        return url.replace("postgresql+asyncpg://", "postgresql://")

    def env(self) -> dict[str, str]:
        broker = self.redis.url if self.redis else ""
        return service_env(
            database_url=self.database_url,
            smtp_port=self.smtp_port,
            data_dir=self.workdir / "data",
            broker_url=broker,
            **self.settings,
        )

    async def start_redis(self) -> RedisServer:
        self.redis = RedisServer(self.workdir / "redis" / "redis.log")
        self.redis.start()
        await self.redis.wait_ready()
        return self.redis

    async def start_api(self, name: str = "api") -> ApiServer:
        api = ApiServer(name, self.env(), self.workdir / name / "serve.log")
        self.apis.append(api)
        api.start()
        await api.wait_live()
        return api

    async def start_worker(self, name: str = "worker") -> CeleryWorker:
        worker = CeleryWorker(name, self.env(), self.workdir / name / "worker.log")
        self.workers.append(worker)
        worker.start()
        await worker.wait_ready()
        return worker

    def stop(self) -> None:
        for service in [*self.apis, *self.workers, *([self.redis] if self.redis else [])]:
            service.stop()

    def logs(self) -> str:
        services = [*self.apis, *self.workers]
        return "\n".join(service.tail(2500) for service in services)

    def tracebacks(self) -> dict[str, int]:
        """Tracebacks in the services' logs, counted by the log line that introduced them."""
        found: Counter[str] = Counter()
        for service in [*self.apis, *self.workers]:
            lines = service.output().splitlines()
            for number, text in enumerate(lines):
                if text.startswith("Traceback (most recent call last):"):
                    before = next((t for t in reversed(lines[:number]) if STAMP.match(t)), "")
                    message = re.sub(r"^\S+Z \[\w+\s*\] ", "", before)[:120]
                    found[f"{service.name}: {message}"] += 1
        return dict(found)

    async def settle_and_record(
        self,
        stream: RegistrationStream,
        *,
        fault: str,
        extra: dict[str, Any] | None = None,
        settle_timeout: float = SETTLE_TIMEOUT_S,
        recovered_at: float | None = None,
    ) -> dict[str, Any]:
        """Wait for every accepted email (bounded), then count and write the results.

        `recovered_at` (time.monotonic()): when the fault ended; each mail's delay after it
        is reported (see mail_delays)."""
        accepted = stream.accepted()
        waited, settled = await wait_settled(self.dsn, self.sink, accepted, within=settle_timeout)
        deliveries = self.sink.snapshot()
        report = account(accepted, deliveries)
        if recovered_at is not None:
            extra = (extra or {}) | mail_delays(stream, deliveries, recovered_at=recovered_at)
        evidence = await job_evidence(self.dsn, lease=LEASE, report=report, deliveries=deliveries)
        figures: dict[str, Any] = {
            "fault": fault,
            **stream.figures(),
            **report.figures(),
            "smtp_451_answers": self.sink.refused,
            "settled": settled,
            "settle_seconds": round(waited, 1),
            "overlapping_runs": len(evidence["overlapping_runs"]),
            "service_starts": {s.name: s.starts for s in [*self.apis, *self.workers]},
            **(extra or {}),
            "evidence": evidence,
        }
        return figures


def migrate(env: dict[str, str], cwd: Path) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"migrate failed:\n{result.stderr}"


@contextlib.contextmanager
def deployment(
    name: str, workdir: Path, cluster: PgCluster, bouncer: PgBouncer | None = None, **settings: str
) -> Iterator[Deployment]:
    """With `bouncer` the services (and their migration) reach the database through it, as
    DB_TRANSACTION_POOLER=true, and LISTEN on the direct URL."""
    sink = SmtpSink()
    database = re.sub(r"\W", "_", name.lower())[:50]
    with smtp_server(sink) as port:
        url = direct = cluster.create_database(database)
        if bouncer is not None:
            url = bouncer.url(database)
            settings = settings | {"db_transaction_pooler": "true", "database_listen_url": direct}
        running = Deployment(name, workdir, cluster, url, sink, port, settings=settings)
        running.direct_url = direct
        migrate(running.env(), workdir)
        try:
            yield running
        finally:
            running.stop()


def verdict(figures: dict[str, Any]) -> list[str]:
    """The targets every scenario is held to; an empty list means all are met."""
    problems = []
    if figures["lost"]:
        problems.append(f"{figures['lost']} accepted registration(s) never got their email")
    if figures["duplicated"]:
        problems.append(f"{figures['duplicated']} recipient(s) got two different emails")
    if figures["answers_5xx_other"]:
        problems.append(f"{figures['answers_5xx_other']} 5xx answer(s) other than 503")
    if figures["accepted"] != figures["registrations"]:
        problems.append(f"only {figures['accepted']} of {figures['registrations']} accepted")
    if figures["delivered_unaccepted"]:
        problems.append(f"{figures['delivered_unaccepted']} email(s) for unaccepted registrations")
    if figures["evidence"]["users"] != figures["accepted"]:
        problems.append(f"{figures['evidence']['users']} users in the database")
    if figures["overlapping_runs"]:
        problems.append(f"{figures['overlapping_runs']} job run(s) overlapped on two workers")
    return problems


def conclude(
    name: str, deployment: Deployment, figures: dict[str, Any], problems: list[str]
) -> None:
    """Record the scenario and fail it (with the evidence) when a target was missed."""
    figures["verdict"] = "ok" if not problems else "FAILED: " + "; ".join(problems)
    figures["problems"] = problems
    figures["tracebacks_in_logs"] = deployment.tracebacks()
    path = record(name, figures)
    assert not problems, f"{line(name, figures)}\nsee {path}\n{deployment.logs()}"


async def sleep_until(condition: Any, within: float, interval: float = 0.1) -> None:
    """Poll a callable until it returns true (at most `within` seconds)."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(interval)
