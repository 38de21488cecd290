"""What a welcome email job costs in CPU, alone and beside Argon2 hashing.

`python -m bench.job_cpu` (after `make bench` installed the bench's packages): the embedded
dispatcher of this process runs welcome jobs enqueued at a steady rate, each in a transaction
of its own as registration enqueues it, against PostgreSQL and the aiosmtpd sink. The CPU of
this process, of the database's backends and of the sink is divided by the jobs. Then the same
again while another process hashes passwords on one thread per core with the service's Argon2
parameters, as registrations under load do: the difference is what sharing the cores with
19 MiB hashes does to the very same work. Writes bench/results/job_cpu-<time>.json.
"""

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from app.core.config import Settings
from app.db.models import Job, JobStatus, User
from app.db.session import Database, create_engine
from app.services import jobs, tasks
from app.services.dispatcher import Dispatcher
from bench import database, services, system

DATABASE = "accounts_job_cpu"
RATE_PER_S = 70.0  # about what registration reaches on 2 cores
SECONDS = 10.0
WARM_UP_JOBS = 50  # open the pool's and the mailer's connections before measuring
WORK = Path(__file__).resolve().parent / ".work" / "job_cpu"
RESULTS = Path(__file__).resolve().parent / "results"

HASH_FOREVER = f"""
import threading
from app.core.security import password_hash
def hash_forever():
    while True:
        password_hash.hash("a password of sorts")
for _ in range({system.CORES}):
    threading.Thread(target=hash_forever, daemon=True).start()
threading.Event().wait()
"""


async def measure(db: Database, user_ids: list[str], sink: services.Process) -> dict[str, Any]:
    """Enqueue one welcome job per user at RATE_PER_S and wait until all succeeded."""
    backends = await database.backend_pids(DATABASE)
    others_before = {pid: system.cpu_seconds(pid) for pid in [*backends, sink.pid]}
    ours_before = time.process_time()
    started = time.monotonic()
    for i, user_id in enumerate(user_ids):
        await asyncio.sleep(max(0.0, started + i / RATE_PER_S - time.monotonic()))
        async with db.transaction() as session:
            await jobs.enqueue(session, tasks.send_welcome_email, tasks.UserMail(user_id=user_id))
    done = select(func.count()).where(Job.status == JobStatus.SUCCEEDED)
    while True:
        async with db.transaction() as session:
            if await session.scalar(done) == len(user_ids):
                break
        await asyncio.sleep(0.2)
    ours = time.process_time() - ours_before
    pg = sum(system.cpu_seconds(pid) - others_before[pid] for pid in backends)
    smtp = system.cpu_seconds(sink.pid) - others_before[sink.pid]
    per_job = 1e6 / len(user_ids)
    async with db.transaction() as session:
        await session.execute(Job.__table__.delete())
    return {
        "jobs": len(user_ids),
        "seconds": round(time.monotonic() - started, 2),
        "process_cpu_us_per_job": round(ours * per_job),
        "postgres_cpu_us_per_job": round(pg * per_job),
        "smtp_sink_cpu_us_per_job": round(smtp * per_job),
    }


async def main_async() -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    url = await database.recreate_pg(DATABASE)
    env = services.service_environment(url, data_dir=WORK, smtp_port=1)
    database.migrate(url, env)
    count = int(RATE_PER_S * SECONDS)
    seeded = await database.seed(url, users=WARM_UP_JOBS + 2 * count, admins=0)
    sink = services.start_smtp_sink(WORK / "mail.jsonl", logs=WORK)
    settings = Settings(
        database_url=url,
        secret_key=services.SECRET_KEY,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_tls=False,
        data_dir=WORK,
        log_level="WARNING",
    )
    db = Database(create_engine(settings))
    dispatcher = Dispatcher(db, settings)
    dispatcher.start()
    async with db.transaction() as session:  # a welcome email goes to unverified users only
        await session.execute(update(User).values(is_verified=False))
    users = [str(user_id) for user_id in seeded.ids]
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        await measure(db, users[:WARM_UP_JOBS], sink)
        users = users[WARM_UP_JOBS:]
        system.wait_for_quiet(60)
        result["alone"] = await measure(db, users[:count], sink)
        hasher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HASH_FOREVER, cwd=database.ROOT
        )
        try:
            await asyncio.sleep(2)
            result["beside_argon2"] = await measure(db, users[count:], sink)
        finally:
            hasher.kill()
            await hasher.wait()
    finally:
        await dispatcher.stop()
        await db.dispose()
        sink.stop()
    return result


def main() -> None:
    result = asyncio.run(main_async())
    path = RESULTS / f"job_cpu-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("alone", "beside_argon2"):
        print(name, result[name])
    print(f"results: {path.relative_to(database.ROOT)}")


if __name__ == "__main__":
    main()
