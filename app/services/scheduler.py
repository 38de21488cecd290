"""Periodic jobs: each tick enqueued once, however many processes look.

Every embedded dispatcher and every relay has a Scheduler and asks it, each time round its loop,
to enqueue the ticks that fell due. Ticks are pure functions of the time (intervals aligned to
the epoch, every hour on the hour; cron expressions in UTC: see schedules), so every process
computes the same ones, and a job row carries its tick in `tick_at`, unique per
job name: the INSERT of a tick that another process enqueued first does nothing
(ON CONFLICT DO NOTHING). Only the current tick is ever enqueued, so ticks missed while nothing
ran come to one run, not one per missed tick. The rows are ordinary jobs from then on: claimed,
retried, listed and retried by operators like any other.
"""

import logging
import math
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.session import Database
from app.services import job_statements as sql
from app.services.job_registry import JobDefinition, Registry, load_jobs
from app.services.schedules import Schedule

logger = logging.getLogger(__name__)


def periodic(registry: Registry, settings: Settings) -> list[tuple[JobDefinition[Any], Schedule]]:
    """The declared periodic jobs and their schedules under these settings."""
    found = []
    for definition in registry.definitions.values():
        schedule = definition.schedule(settings)
        if schedule is not None:
            found.append((definition, schedule))
    return found


class Scheduler:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        # Fixed for the process: the declared jobs, and their schedules under these settings.
        self.jobs = periodic(load_jobs(), settings)
        # Job name -> (wall clock) when its next tick starts; absent: look now.
        self._next: dict[str, float] = {}

    def seconds_until_due(self) -> float:
        """How long until a tick falls due (0: one is due now)."""
        if not self.jobs:
            return math.inf
        now = time.time()
        return max(min(self._next.get(d.name, now) for d, _ in self.jobs) - now, 0.0)

    async def enqueue_due(self) -> int:
        """Enqueue the current tick of every periodic job whose tick fell due; how many rows
        this process inserted (a tick another process enqueued first counts 0)."""
        now = utcnow()
        due = [
            (definition, schedule)
            for definition, schedule in self.jobs
            if self._next.get(definition.name, 0.0) <= now.timestamp()
        ]
        if not due:
            return 0
        inserted = 0
        try:
            async with self.db.statement() as connection:
                for definition, schedule in due:
                    tick = schedule.tick(now)
                    inserted += await insert_tick(connection, definition, tick, now=now)
        except Exception:
            # The database is away: look again at the next poll, not at once.
            for definition, _ in due:
                self._next[definition.name] = time.time() + self.settings.job_poll_seconds
            raise
        for definition, schedule in due:
            self._next[definition.name] = schedule.next_tick(now).timestamp()
        return inserted


async def insert_tick(
    connection: AsyncConnection, definition: JobDefinition[Any], tick: datetime, *, now: datetime
) -> int:
    """INSERT the job of one tick unless it exists; 1 when this call inserted it."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(sql.jobs)
        .values(
            id=uuid.uuid4(),
            name=definition.name,
            payload=definition.payload_type().model_dump(mode="json"),
            status=JobStatus.QUEUED,
            attempts=0,
            max_attempts=definition.max_attempts,
            run_at=now,
            tick_at=tick,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(
            index_elements=["name", "tick_at"], index_where=sql.jobs.c.tick_at.is_not(None)
        )
    )
    result = await connection.execute(statement)
    if result.rowcount:
        logger.info("periodic job %s enqueued for %s", definition.name, tick.isoformat())
    return result.rowcount
