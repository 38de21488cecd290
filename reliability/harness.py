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

from reliability.load import RegistrationStream
from reliability.postgres import PgCluster
from reliability.processes import ApiServer, CeleryWorker, RedisServer, service_env
from reliability.results import line, record
from reliability.smtp import SmtpSink, smtp_server
from reliability.verify import account, job_evidence, wait_settled

LEASE = timedelta(seconds=20)  # JOB_LEASE_SECONDS of service_env
SETTLE_TIMEOUT_S = 300.0
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

    @property
    def dsn(self) -> str:
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://")

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
    ) -> dict[str, Any]:
        """Wait for every accepted email (bounded), then count and write the results."""
        accepted = stream.accepted()
        waited, settled = await wait_settled(self.dsn, self.sink, accepted, within=settle_timeout)
        deliveries = self.sink.snapshot()
        report = account(accepted, deliveries)
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
    name: str, workdir: Path, cluster: PgCluster, **settings: str
) -> Iterator[Deployment]:
    sink = SmtpSink()
    database = re.sub(r"\W", "_", name.lower())[:50]
    with smtp_server(sink) as port:
        url = cluster.create_database(database)
        running = Deployment(name, workdir, cluster, url, sink, port, settings=settings)
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
