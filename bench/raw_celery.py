"""Raw Celery, for comparison: a no-op task on the same broker, with the service's settings.

Worker: python -m celery -A bench.raw_celery worker --concurrency N -Q bench-raw
"""

import os

from celery import Celery

QUEUE = "bench-raw"
TASK = "bench.noop"

app = Celery(
    "bench_raw",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"),
    set_as_current=False,
)
# What app/worker.py sets for the service's own tasks.
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)
def noop() -> None:
    return None


def publish(count: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(TASK, producer=producer)
