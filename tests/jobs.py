"""Waiting for background jobs in tests."""

import asyncio
import uuid

from app.db.models import Job, JobStatus
from app.db.session import Database

JOB_WAIT_S = 15.0


async def wait_for_job(db: Database, job_id: uuid.UUID, *statuses: JobStatus) -> Job:
    """The job, once it reaches one of `statuses` (at most JOB_WAIT_S)."""
    async with asyncio.timeout(JOB_WAIT_S):
        while True:
            async with db.transaction() as session:
                job = await session.get(Job, job_id)
            if job is not None and job.status in statuses:
                return job
            await asyncio.sleep(0.02)
