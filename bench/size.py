"""`BENCH_PARTS=size`: what a page, an enqueue and a claim cost as the tables grow, and whether
retention keeps the job tables flat over a simulated month.

Each size has a PostgreSQL database of its own, filled in bulk (bench/size_data.py). The pages
are asked of the real app in this process (httpx over ASGI, a superuser's token), the sizes
interleaved round by round so that a drift of the machine hits every size alike; beside them,
the list queries of before (OFFSET and a count(*)) run as plain SQL on the same data. Enqueue
and claim go through the service's own code (services.jobs.enqueue in a transaction, then
job_store.claim). The month is simulated: each hour's rows are inserted with that hour's
timestamps and retention.prune() runs with `now` at its end, as the hourly prune_history would.

BENCH_QUICK=1 sizes 1,000 and 100,000 rows; BENCH_SIZE_LARGE=1 sizes 1,000 and 1,000,000.
"""

import asyncio
import functools
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.core import security
from app.core.config import Settings
from app.core.security import password_hash
from app.db.models import JobStatus, User
from app.db.session import Database, create_engine
from app.main import create_app
from app.services import job_store, jobs, pagination, retention, tasks
from app.services.job_store import Outcome
from bench import database, size_data, system
from bench.services import SECRET_KEY

PASSWORD = database.PASSWORD
WORK = Path(__file__).resolve().parent / ".work"
ADMIN = "size-admin@bench.example.com"
LIMIT = 50


def large() -> bool:
    return os.environ.get("BENCH_SIZE_LARGE", "") not in ("", "0", "false")


def plan(quick: bool) -> dict[str, Any]:
    if large():
        return {"sizes": [1_000, 1_000_000], "rounds": 15, "per_round": 20, "claims": 400,
                "days": 30, "per_hour": 1_000}  # fmt: skip
    return {"sizes": [1_000, 100_000], "rounds": 6 if quick else 10, "per_round": 15,
            "claims": 200, "days": 30, "per_hour": 100 if quick else 400}  # fmt: skip


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        secret_key=SECRET_KEY,
        rate_limit_enabled=False,
        prune_interval_seconds=0,  # the month's pruning is called by the bench, hour by hour
        log_level="WARNING",
        access_log=False,
        _env_file=None,
    )


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": SECRET_KEY, "LOG_LEVEL": "WARNING"}
    database.migrate(url, env)


# --- pages -----------------------------------------------------------------------------------


def _cursor(settings: Settings, scope: list[str | None], values: list[Any]) -> str:
    """The cursor the service itself would hand out after the row with these values."""
    key = security.purpose_key(settings.signing_key, security.PAGE_CURSORS)
    signer = pagination._Signer(key, scope)
    return signer.sign(json.dumps([pagination._dump(v) for v in values]).encode())


def _values(row: Any) -> list[Any]:
    """(created_at, id) as the service reads them; SQLite gives them back as text."""
    created_at, id_ = row[0], row[1]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at).replace(tzinfo=UTC)
    return [created_at, id_ if isinstance(id_, uuid.UUID) else uuid.UUID(id_)]


class Sized:
    """One size: its database, the app on it, the requests and the SQL of before."""

    def __init__(self, rows: int, url: str) -> None:
        self.rows = rows
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.settings = settings_for(url)
        self.app = create_app(self.settings)
        self.requests: dict[str, str] = {}
        self.before: dict[str, tuple[str, str, list[Any]]] = {}

    async def open(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.app.router.lifespan_context(self.app))
        transport = httpx.ASGITransport(app=self.app)
        self.client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://bench")
        )
        self.sql: Any = await (
            size_data.SqliteConnection.open(self.url)
            if self.sqlite
            else size_data.connect(self.url)
        )
        stack.push_async_callback(self.sql.close)
        token = (
            await self.client.post(
                "/api/v1/auth/token", data={"username": ADMIN, "password": PASSWORD}
            )
        ).json()
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}
        middle = self.rows // 2
        user = await self.sql.fetchrow(
            "SELECT created_at, id FROM users ORDER BY created_at, id LIMIT 1 OFFSET $1", middle
        )
        job = await self.sql.fetchrow(
            "SELECT created_at, id FROM jobs ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET $1",
            middle,
        )
        deep_user = _cursor(self.settings, ["users"], _values(user))
        deep_job = _cursor(self.settings, ["jobs", None, None], _values(job))
        rare = f"status={size_data.RARE_STATUS}"
        self.requests = {
            "users_first": f"/api/v1/users?limit={LIMIT}",
            "users_deep": f"/api/v1/users?limit={LIMIT}&cursor={deep_user}",
            "jobs_first": f"/api/v1/jobs?limit={LIMIT}",
            "jobs_deep": f"/api/v1/jobs?limit={LIMIT}&cursor={deep_job}",
            "jobs_status": f"/api/v1/jobs?limit={LIMIT}&{rare}",
            "jobs_name": f"/api/v1/jobs?limit={LIMIT}&name={size_data.RARE_NAME}",
            "jobs_status_name": f"/api/v1/jobs?limit={LIMIT}&{rare}&name={size_data.RARE_NAME}",
        }
        # Before: what the lists did until they paged by cursor, an OFFSET page and a count of
        # everything the list (and its filter) holds.
        users_page = "SELECT * FROM users ORDER BY created_at, id LIMIT 50 OFFSET $1"
        jobs_page = "SELECT * FROM jobs {} ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET $1"
        by_status = "WHERE status = 'dead'"
        by_name = f"WHERE name = '{size_data.RARE_NAME}'"
        both = f"{by_status} AND name = '{size_data.RARE_NAME}'"
        self.before = {
            "users_first": ("SELECT count(*) FROM users", users_page, [0]),
            "users_deep": ("SELECT count(*) FROM users", users_page, [middle]),
            "jobs_first": ("SELECT count(*) FROM jobs", jobs_page.format(""), [0]),
            "jobs_deep": ("SELECT count(*) FROM jobs", jobs_page.format(""), [middle]),
            "jobs_status": (f"SELECT count(*) FROM jobs {by_status}", jobs_page.format(by_status),
                            [0]),
            "jobs_name": (f"SELECT count(*) FROM jobs {by_name}", jobs_page.format(by_name), [0]),
            "jobs_status_name": (f"SELECT count(*) FROM jobs {both}", jobs_page.format(both), [0]),
        }  # fmt: skip

    async def page(self, scenario: str) -> float:
        started = time.perf_counter()
        response = await self.client.get(self.requests[scenario], headers=self.headers)
        took = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == LIMIT, scenario
        return took

    async def offset_and_count(self, scenario: str) -> float:
        count, page, args = self.before[scenario]
        started = time.perf_counter()
        await self.sql.fetchval(count)
        rows = await self.sql.fetch(page, *args)
        took = time.perf_counter() - started
        assert len(rows) == LIMIT, scenario
        return took


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
    }


async def interleaved(
    measures: dict[Any, Callable[[], Awaitable[float]]], *, rounds: int, per_round: int
) -> dict[Any, list[float]]:
    """Each measure `per_round` times in turn, `rounds` times over; a few unrecorded first."""
    samples: dict[Any, list[float]] = {key: [] for key in measures}
    for measure in measures.values():
        for _ in range(3):
            await measure()
    for _ in range(rounds):
        for key, measure in measures.items():
            for _ in range(per_round):
                samples[key].append(await measure())
    return samples


async def pages(p: dict[str, Any], databases: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    async with AsyncExitStack() as stack:
        sized = {key: Sized(key[1], url) for key, url in databases.items()}
        for s in sized.values():
            await s.open(stack)
        scenarios = list(next(iter(sized.values())).requests)
        measures: dict[Any, Callable[[], Awaitable[float]]] = {}
        for scenario in scenarios:
            for (backend, rows), s in sized.items():
                measures[backend, "cursor", scenario, rows] = functools.partial(s.page, scenario)
                measures[backend, "offset", scenario, rows] = functools.partial(
                    s.offset_and_count, scenario
                )
        system.wait_for_quiet(60)
        samples = await interleaved(measures, rounds=p["rounds"], per_round=p["per_round"])
    return [
        {"backend": backend, "way": way, "scenario": scenario, "rows": rows, **summary(values)}
        for (backend, way, scenario, rows), values in samples.items()
    ]


# --- enqueue and claim -----------------------------------------------------------------------


class Queue:
    """A registration's job through the service's code: enqueued in a committed transaction,
    then claimed by the pending-jobs claim every dispatcher runs, then recorded as succeeded
    (not timed) so the table keeps only finished jobs."""

    def __init__(self, url: str) -> None:
        self.db = Database(create_engine(settings_for(url)))
        self.lease = timedelta(minutes=1)

    async def enqueue(self) -> float:
        started = time.perf_counter()
        async with self.db.transaction() as session:
            payload = tasks.UserMail(user_id=uuid.uuid4())
            await jobs.enqueue(session, tasks.send_welcome_email, payload)
        return time.perf_counter() - started

    async def claim(self) -> float:
        started = time.perf_counter()
        [claimed] = await job_store.claim(self.db, worker="bench", limit=1, lease=self.lease)
        took = time.perf_counter() - started
        outcome = Outcome(claimed, JobStatus.SUCCEEDED, datetime.now(UTC))
        async with self.db.statement() as connection:
            await job_store.record(connection, [outcome], worker="bench")
        return took

    async def both(self) -> tuple[float, float]:
        return await self.enqueue(), await self.claim()


async def enqueue_and_claim(
    p: dict[str, Any], databases: dict[tuple[str, int], str]
) -> list[dict[str, Any]]:
    queues = {key: Queue(url) for key, url in databases.items()}
    timings: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        key: ([], []) for key in queues
    }
    try:
        for queue in queues.values():
            for _ in range(20):
                await queue.both()
        system.wait_for_quiet(60)
        for _ in range(p["claims"] // 20):
            for key, queue in queues.items():
                for _ in range(20):
                    enqueued, claimed = await queue.both()
                    timings[key][0].append(enqueued)
                    timings[key][1].append(claimed)
    finally:
        for queue in queues.values():
            await queue.db.dispose()
    return [
        {"backend": backend, "what": what, "finished_jobs": rows, **summary(samples[i])}
        for (backend, rows), samples in timings.items()
        for i, what in enumerate(("enqueue", "claim"))
    ]


# --- a simulated month -----------------------------------------------------------------------


async def month(p: dict[str, Any], url: str) -> dict[str, Any]:
    settings = settings_for(url)
    db = Database(create_engine(settings))
    connection = await size_data.connect(url)
    user_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO users (id, email, name, hashed_password, is_active, is_verified,"
        " is_superuser, token_version, created_at, updated_at)"
        " VALUES ($1, 'month@bench.example.com', 'Month', 'x', true, true, false, 0, now(), now())",
        user_id,
    )
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=p["days"])
    days: list[dict[str, Any]] = []
    prune_s: list[float] = []
    try:
        for hour in range(1, 24 * p["days"] + 1):
            now = start + timedelta(hours=hour)
            await size_data.insert_hour(
                connection,
                per_hour=p["per_hour"],
                until=now,
                user_id=user_id,
                token_days=settings.refresh_token_expire_days,
            )
            started = time.perf_counter()
            pruned = await retention.prune(db, settings, now=now)
            prune_s.append(time.perf_counter() - started)
            if hour % 24 == 0:
                # Autovacuum, which in a real day runs many times over these tables, stands in
                # for itself here once per simulated day: a plain VACUUM (no FULL, no lock).
                await connection.execute("VACUUM " + ", ".join(size_data.PRUNED_TABLES))
                tables = await size_data.sizes(connection)
                days.append(
                    {
                        "day": hour // 24,
                        "tables": tables,
                        "pruned_last_hour": pruned.deleted,
                        "prune_ms_median": round(statistics.median(prune_s[-24:]) * 1000, 1),
                    }
                )
                print(
                    f"  day {hour // 24}: "
                    + ", ".join(f"{t} {v['rows']:,} rows {v['bytes'] / 2**20:.1f} MiB"
                                for t, v in tables.items()),
                    flush=True,
                )  # fmt: skip
    finally:
        await connection.close()
        await db.dispose()
    return {"per_hour": p["per_hour"], "days": days,
            "retention_days": settings.job_retention_days,
            "refresh_token_days": settings.refresh_token_expire_days}  # fmt: skip


# --- the part --------------------------------------------------------------------------------


async def run(quick: bool) -> dict[str, Any]:
    p = plan(quick)
    base = "accounts_bench_size"
    hashed = password_hash.hash(PASSWORD)
    until = datetime.now(UTC) - timedelta(days=1)
    databases: dict[tuple[str, int], str] = {}
    loads: dict[str, dict[str, float]] = {}
    # SQLite where it is cheap: the quick form's sizes, a file each.
    backends = ["postgresql"] if large() else ["postgresql", "sqlite"]
    for backend in backends:
        for rows in [0, *p["sizes"]]:
            if backend == "sqlite":
                url = database.recreate_sqlite(WORK / f"size-{rows}.db")
            else:
                url = await database.recreate_pg(f"{base}_{rows}")
            migrate(url)
            print(f"size: {backend}, {rows:,} users and {rows:,} finished jobs", flush=True)
            if backend == "sqlite":
                loads[f"sqlite {rows}"] = await asyncio.to_thread(
                    size_data.fill_sqlite,
                    url, users=rows, jobs=rows, hashed_password=hashed, until=until,
                )  # fmt: skip
            else:
                loads[f"postgresql {rows}"] = await size_data.fill(
                    url, users=rows, jobs=rows, hashed_password=hashed, until=until
                )
            await add_admin(url, hashed)
            databases[backend, rows] = url
    sized = {key: url for key, url in databases.items() if key[1]}
    print(f"size: pages at {list(sized)}, {p['rounds']} interleaved rounds", flush=True)
    page_results = await pages(p, sized)
    ends = {key: url for key, url in databases.items() if key[1] in (0, p["sizes"][-1])}
    print(f"size: enqueue and claim, {list(ends)} finished jobs", flush=True)
    queue_results = await enqueue_and_claim(p, ends)
    print(f"size: {p['days']} simulated days at {p['per_hour']:,} per hour", flush=True)
    month_url = await database.recreate_pg(f"{base}_month")
    migrate(month_url)
    month_results = await month(p, month_url)
    return {"large": large(), "plan": p, "backends": backends, "loads": loads,
            "pages": page_results, "queue": queue_results, "month": month_results}  # fmt: skip


async def add_admin(url: str, hashed: str) -> None:
    """The superuser whose token asks for the pages (created after every seeded row)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(User),
                [{"email": ADMIN, "name": "Admin", "hashed_password": hashed,
                  "is_verified": True, "is_superuser": True}],
            )  # fmt: skip
    finally:
        await engine.dispose()


# --- the report's section --------------------------------------------------------------------

PAGE_TARGET = 2.0
QUEUE_TARGET = 1.2
FLAT_TARGET = 1.1  # the job tables' bytes at the month's end over those a day past retention
TITLES = {
    "users_first": "users, first page",
    "users_deep": "users, a page in the middle (by cursor)",
    "jobs_first": "jobs, first page",
    "jobs_deep": "jobs, a page in the middle (by cursor)",
    "jobs_status": "jobs, status=dead",
    "jobs_name": f"jobs, name={size_data.RARE_NAME}",
    "jobs_status_name": "jobs, status and name",
}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render(item: dict[str, Any] | None) -> list[str]:
    if not item:
        return []
    small, big = item["plan"]["sizes"][0], item["plan"]["sizes"][-1]
    backends = item.get("backends", ["postgresql"])
    found = {
        (p.get("backend", "postgresql"), p["way"], p["scenario"], p["rows"]): p["median_ms"]
        for p in item["pages"]
    }
    lines = [
        "",
        f"## Cost against size (issue 13), {big:,} rows",
        "",
        f"{'The large form (BENCH_SIZE_LARGE=1)' if item['large'] else 'The quick form'}: "
        f"{small:,} and {big:,} users and finished jobs (with their runs), each size in a "
        f"database of its own ({', '.join(backends)}) filled in bulk by the database itself "
        "(INSERT ... SELECT generate_series, a recursive CTE on SQLite), then analysed. Pages "
        "are asked of the real app in the bench process (httpx over ASGI, a superuser's "
        f"token, limit={LIMIT}); the sizes take turns, {item['plan']['rounds']} rounds of "
        f"{item['plan']['per_round']} requests each. Before: the list's old queries, written "
        "plainly in bench/size.py (a count(*) of what the list holds, then LIMIT 50 OFFSET "
        "n), as SQL on the driver over the same data: without HTTP, so only its ratio "
        "compares. Jobs: a quarter are password resets, a tenth dead. Medians.",
    ]
    for backend in backends:
        lines += [
            "",
            f"| page ({backend}) | {small:,} rows ms | {big:,} rows ms | ratio (goal ≤ "
            f"{PAGE_TARGET:g}x) | before: offset + count, {small:,} ms | {big:,} ms | "
            "before ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for scenario, title in TITLES.items():
            a = found.get((backend, "cursor", scenario, small))
            b = found.get((backend, "cursor", scenario, big))
            c = found.get((backend, "offset", scenario, small))
            d = found.get((backend, "offset", scenario, big))
            if a is None or b is None or c is None or d is None:
                continue
            mark = "met" if b / a <= PAGE_TARGET else "**missed**"
            lines.append(
                f"| {title} | {a:.2f} | {b:.2f} | {_ratio(b, a)} {mark} | {c:.2f} | {d:.2f} | "
                f"{_ratio(d, c)} |"
            )
    queue = {
        (q.get("backend", "postgresql"), q["what"], q["finished_jobs"]): q for q in item["queue"]
    }
    lines += [
        "",
        f"A registration's job with {big:,} finished jobs in the table, against an empty one: "
        "services.jobs.enqueue in a committed transaction, then job_store.claim (the pending "
        "claim every dispatcher runs), alternated in rounds of 20, "
        f"{queue[backends[0], 'enqueue', 0]['n']} of each.",
        "",
        f"| step | empty ms | {big:,} finished ms | ratio (goal ≤ {QUEUE_TARGET:g}x) |",
        "|---|---|---|---|",
    ]
    for backend in backends:
        for what in ("enqueue", "claim"):
            a, b = queue[backend, what, 0]["median_ms"], queue[backend, what, big]["median_ms"]
            mark = "met" if b / a <= QUEUE_TARGET else "**missed**"
            lines.append(f"| {what} ({backend}) | {a:.3f} | {b:.3f} | {_ratio(b, a)} {mark} |")
    lines += _render_month(item["month"])
    return lines


def _render_month(m: dict[str, Any]) -> list[str]:
    days = m["days"]
    per_day = m["per_hour"] * 24
    lines = [
        "",
        f"A simulated month at {m['per_hour']:,} registrations, logins and keyed registrations "
        f"an hour ({per_day:,} a day): each hour's jobs, runs, sessions, refresh tokens (two "
        "per login, the first rotated) and idempotency keys inserted with that hour's "
        "timestamps, then retention.prune() with `now` at the hour's end, as the hourly "
        "prune_history runs it; a plain VACUUM once per simulated day stands in for "
        f"autovacuum. JOB_RETENTION_DAYS {m['retention_days']:g}, refresh tokens "
        f"{m['refresh_token_days']} days. Rows / MiB (pg_total_relation_size) at each day's end:",
        "",
        "| day | jobs | job_runs | login_sessions | refresh_tokens | idempotency_keys | "
        "prune ms (median of the day's hours) |",
        "|---|---|---|---|---|---|---|",
    ]
    for day in days:
        cells = [
            f"{t['rows']:,} / {t['bytes'] / 2**20:.1f}"
            for t in (day["tables"][name] for name in size_data.PRUNED_TABLES)
        ]
        lines.append(f"| {day['day']} | " + " | ".join(cells) + f" | {day['prune_ms_median']} |")
    settled = next((d for d in days if d["day"] >= m["retention_days"] + 1), None)
    if settled and days[-1] is not settled:

        def job_bytes(day: dict[str, Any]) -> int:
            return int(day["tables"]["jobs"]["bytes"] + day["tables"]["job_runs"]["bytes"])

        ratio = job_bytes(days[-1]) / job_bytes(settled)
        mark = "met" if ratio <= FLAT_TARGET else "**missed**"
        lines += [
            "",
            f"The job tables (jobs + job_runs, with indexes) on day {days[-1]['day']} over day "
            f"{settled['day']}: {ratio:.2f}x (goal: flat, ≤ {FLAT_TARGET:g}x) {mark}.",
        ]
    return lines
