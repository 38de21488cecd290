"""What happened, from the outside (the SMTP sink) and from the inside (jobs and job_runs).

Vocabulary of the reports:
- accepted: registrations answered 201;
- delivered: accepted recipients that the sink received a message for;
- lost: accepted, never delivered before the deadline;
- duplicated: recipients that received more than one *distinct* Message-ID, i.e. two emails
  a Message-ID-idempotent mail path cannot fold into one;
- resent: extra transmissions of a Message-ID that was already delivered (at-least-once:
  a job that sent its mail and died before recording it runs again with the same id).
"""

import asyncio
import math
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from reliability.load import RegistrationStream
from reliability.smtp import Delivery, SmtpSink

UNSETTLED = ("queued", "running", "failed")


@dataclass
class DeliveryReport:
    accepted: int
    delivered: int
    lost: list[str]
    duplicated: list[str]
    resent: int
    unexpected: list[str]  # delivered to someone whose registration was not accepted

    def figures(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "resent_same_message_id": self.resent,
            "delivered_unaccepted": len(self.unexpected),
        }


def account(accepted: set[str], deliveries: list[Delivery]) -> DeliveryReport:
    transmissions = Counter((d.recipient, d.message_id) for d in deliveries)
    per_recipient = Counter(recipient for recipient, _ in transmissions)
    return DeliveryReport(
        accepted=len(accepted),
        delivered=len(accepted & set(per_recipient)),
        lost=sorted(accepted - set(per_recipient)),
        duplicated=sorted(r for r, n in per_recipient.items() if n > 1),
        resent=sum(n - 1 for n in transmissions.values()),
        unexpected=sorted(set(per_recipient) - accepted),
    )


def mail_delays(
    stream: RegistrationStream, deliveries: list[Delivery], *, recovered_at: float
) -> dict[str, Any]:
    """How long after the fault ended the mails waiting for it arrived.

    For each accepted registration whose first mail arrived after `recovered_at`: seconds from
    the later of `recovered_at` and its 201 until that mail. Mails that went out during the
    fault did not wait for recovery and are not counted."""
    arrived: dict[str, float] = {}
    for delivery in deliveries:
        arrived[delivery.recipient] = min(delivery.at, arrived.get(delivery.recipient, math.inf))
    delays = []
    for registration in stream.registrations:
        at = arrived.get(registration.email.lower())
        answered = [a.finished for a in registration.attempts if a.status == 201 and a.finished]
        if not registration.accepted or at is None or at < recovered_at or not answered:
            continue
        delays.append(at - max(recovered_at, answered[-1]))
    delays.sort()

    def rank(share: float) -> float | None:
        if not delays:
            return None
        return round(delays[max(math.ceil(share * len(delays)) - 1, 0)], 2)

    return {
        "mails_after_fault": len(delays),
        "mail_delay_max_s": rank(1.0),
        "mail_delay_p50_s": rank(0.5),
        "mail_delay_p99_s": rank(0.99),
    }


async def connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=10)


async def unsettled_jobs(dsn: str) -> int:
    connection = await connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(UNSETTLED)
        )
    finally:
        await connection.close()
    return count


async def wait_settled(
    dsn: str, sink: SmtpSink, accepted: set[str], *, within: float
) -> tuple[float, bool]:
    """Until every accepted registration has its email and no job is left to run (or
    `within` seconds); then a few seconds more, so a late resend would still be seen.
    Returns the seconds waited and whether it settled."""
    started = time.monotonic()
    settled = False
    while time.monotonic() - started < within:
        delivered = set(sink.recipients())
        if accepted <= delivered:
            try:
                settled = await unsettled_jobs(dsn) == 0
            except (OSError, asyncpg.PostgresError):
                settled = False
            if settled:
                break
        await asyncio.sleep(0.5)
    waited = time.monotonic() - started
    await asyncio.sleep(3.0)
    return waited, settled


@dataclass(frozen=True)
class Run:
    job_id: uuid.UUID
    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None


def overlaps(runs: list[Run], lease: timedelta) -> list[dict[str, Any]]:
    """Pairs of runs of one job, on different workers, whose intervals intersect.

    A run that never finished (its process died) is taken to end when its lease ran out,
    the earliest moment another worker may take the job over."""
    by_job: dict[uuid.UUID, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    found = []
    for job_id, job_runs in by_job.items():
        job_runs.sort(key=lambda r: r.started_at)
        for i, first in enumerate(job_runs):
            end = first.finished_at or first.started_at + lease
            for second in job_runs[i + 1 :]:
                if second.worker != first.worker and second.started_at < end:
                    found.append(
                        {
                            "job_id": str(job_id),
                            "first": [first.worker, str(first.started_at), str(end)],
                            "second": [second.worker, str(second.started_at)],
                        }
                    )
    return found


async def load_runs(dsn: str) -> list[Run]:
    connection = await connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT job_id, attempt, worker, started_at, finished_at, outcome FROM job_runs"
        )
    finally:
        await connection.close()
    return [Run(*row) for row in rows]


async def job_evidence(
    dsn: str, *, lease: timedelta, report: DeliveryReport, deliveries: list[Delivery]
) -> dict[str, Any]:
    """The jobs and job_runs tables summed up, with the rows behind every lost, duplicated
    or resent email."""
    connection = await connect(dsn)
    try:
        statuses = dict(await connection.fetch("SELECT status, count(*) FROM jobs GROUP BY 1"))
        users = await connection.fetchval("SELECT count(*) FROM users WHERE NOT is_superuser")
        attempts = dict(await connection.fetch("SELECT attempts, count(*) FROM jobs GROUP BY 1"))
        jobs_by_email = {
            row["email"]: row
            for row in await connection.fetch(
                "SELECT u.email, j.id, j.status, j.attempts, j.last_error FROM jobs j"
                " JOIN users u ON u.id = (j.payload->>'user_id')::uuid"
            )
        }
    finally:
        await connection.close()
    runs = await load_runs(dsn)
    outcomes = Counter(run.outcome or "unfinished" for run in runs)
    runs_by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_by_job[str(run.job_id)].append(run)

    def describe(email: str) -> dict[str, Any]:
        job = jobs_by_email.get(email)
        if job is None:
            return {"email": email, "job": None}
        job_runs = sorted(runs_by_job.get(str(job["id"]), []), key=lambda r: r.started_at)
        return {
            "email": email,
            "job": str(job["id"]),
            "status": job["status"],
            "attempts": job["attempts"],
            "last_error": job["last_error"],
            "runs": [
                [r.attempt, r.worker, str(r.started_at), str(r.finished_at), r.outcome]
                for r in job_runs
            ],
            "message_ids": sorted({d.message_id for d in deliveries if d.recipient == email}),
        }

    transmissions = Counter((d.recipient, d.message_id) for d in deliveries)
    resent = sorted({recipient for (recipient, _), n in transmissions.items() if n > 1})
    return {
        "users": users,
        "job_status": dict(sorted(statuses.items())),
        "job_attempts": {str(k): v for k, v in sorted(attempts.items())},
        "runs": len(runs),
        "run_outcomes": dict(sorted(outcomes.items())),
        "jobs_with_several_runs": sum(len(r) > 1 for r in runs_by_job.values()),
        "overlapping_runs": overlaps(runs, lease),
        "lost": [describe(email) for email in report.lost[:20]],
        "duplicated": [describe(email) for email in report.duplicated[:20]],
        "resent": [describe(email) for email in resent[:20]],
    }
