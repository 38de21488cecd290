"""Put on PYTHONPATH by the bench only: applies bench/noop_jobs.py in every process it starts,
uvicorn's spawned workers and Celery's pool processes included."""

import os

if os.environ.get("BENCH_NOOP_JOB") or os.environ.get("BENCH_SKIP_WELCOME_JOB"):
    from bench.noop_jobs import install

    install()
