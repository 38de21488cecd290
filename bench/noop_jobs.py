"""Bench-only additions to the service, loaded by bench/hooks/sitecustomize.py (no app change).

BENCH_NOOP_JOB=1: a job `bench_noop` that does nothing, declared in every process that runs
jobs (API processes for the embedded backend, Celery pool processes), for job throughput.
BENCH_SKIP_WELCOME_JOB=1: registration enqueues no welcome job, to measure what the job costs.
"""

import os
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.services import jobs
from app.services.job_registry import job, registry

NOOP_JOB = "bench_noop"


class Nothing(BaseModel):
    pass


async def bench_noop(payload: Nothing) -> None:
    return None


def install() -> None:
    if os.environ.get("BENCH_NOOP_JOB") and registry.get(NOOP_JOB) is None:
        job(max_attempts=1)(bench_noop)
    if os.environ.get("BENCH_SKIP_WELCOME_JOB"):
        enqueue = jobs.enqueue

        async def enqueue_all_but_welcome(
            session: AsyncSession, definition: Any, payload: Any
        ) -> Any:
            if definition.name == "send_welcome_email":
                return None
            return await enqueue(session, definition, payload)

        jobs.enqueue = enqueue_all_but_welcome
