"""`make bench`: measure the service against the raw ceiling, write JSON, REPORT.md and plots.

BENCH_QUICK=1 runs a short matrix; BENCH_PARTS=argon2,http,latency,throughput,hostile,tracing,
size,pgbouncer picks sections (size: BENCH_SIZE_LARGE=1 for its 1,000,000-row form).
"""

import asyncio
import json
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import (
    argon2_bound,
    code,
    database,
    deployment,
    hostile,
    jobs_bench,
    pgbouncer,
    profiling,
    report,
    services,
    size,
    system,
    tracing_bench,
)
from bench.deployment import Deployment, Workspace
from bench.load import Target, measure, now_nonce
from bench.matrix import Matrix, from_environment
from bench.services import Process
from bench.wrk import Load, ensure_wrk

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / ".work"


def environment() -> dict[str, Any]:
    wrk = subprocess.run([ensure_wrk(), "--version"], capture_output=True, text=True)
    postgres = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
        capture_output=True,
        text=True,
    )
    packages = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "pydantic", "celery")
    return {
        "cores": system.CORES,
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": postgres.stdout.strip(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
        "packages": {name: version(name) for name in packages},
        "code": code.fingerprint(),
    }


class Results:
    """The run's JSON, written again after every point so an interrupted run keeps its data."""

    def __init__(self, m: Matrix) -> None:
        self.started = datetime.now(UTC)
        self.path = RESULTS / f"{self.started:%Y%m%dT%H%M%SZ}.json"
        self.data: dict[str, Any] = {
            "started_at": self.started.isoformat(timespec="seconds"),
            "matrix": m.to_json(),
            "environment": environment(),
            "argon2": None,
            "points": [],
            "configs": [],
            "profiles": [],
            "latency": [],
            "throughput": [],
        }

    def add(self, section: str, item: Any) -> None:
        self.data[section].append(item)
        self.save()

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def memory(process: Process | None) -> dict[str, Any] | None:
    if process is None:
        return None
    peaks = [round(kib / 1024, 1) for kib in process.peak_rss_kib.values()]
    return {"processes": len(peaks), "max_mib": max(peaks, default=0), "sum_mib": sum(peaks)}


async def ceiling(
    m: Matrix, ws: Workspace, results: Results, *, workers: tuple[int, ...], conns: tuple[int, ...]
) -> None:
    url = await database.recreate_pg()
    database.migrate(url, services.service_environment(url, data_dir=ws.root, smtp_port=1))
    seeded = await database.seed(url, users=m.seed_users, admins=0)
    ids_file = deployment.write_requests(
        ws.root / "requests" / "baseline_get.txt", [f"/users/{i}\t-" for i in seeded.ids[:4096]]
    )
    loads = {
        "baseline_get": Load("get", file=ids_file),
        "baseline_insert": Load("insert", "/users"),
    }
    for w in workers:
        baseline = services.start_baseline(database.plain_dsn(url), workers=w, logs=ws.logs)
        target = Target(
            "baseline", "pg", w, f"http://127.0.0.1:{baseline.port}", baseline, None,
            database.PG_DATABASE,
        )  # fmt: skip
        try:
            for c in conns:
                for scenario, load in loads.items():
                    point = await measure(
                        target,
                        scenario,
                        load,
                        connections=c,
                        duration_s=m.duration_s,
                        warmup_s=m.warmup_s,
                        quiet_wait_s=m.quiet_wait_s,
                        nonce=now_nonce(),
                        extra_pids=[],
                    )
                    results.add("points", point)
        finally:
            baseline.stop()
        results.add(
            "configs", {"kind": "baseline", "backend": "pg", "workers": w, "api": memory(baseline)}
        )


def scenario_loads(d: Deployment, ws: Workspace) -> dict[str, Load]:
    requests = ws.root / "requests"
    return {
        "users_me": Load("get", file=deployment.users_me_requests(d, requests / "me.txt")),
        "users_by_id": Load("get", file=deployment.users_by_id_requests(d, requests / "ids.txt")),
        "token": Load(
            "token",
            "/api/v1/auth/token",
            file=deployment.login_emails(d, requests / "emails.txt"),
            password=database.PASSWORD,
        ),
        "register": Load("register", "/api/v1/auth/register", password=database.PASSWORD),
    }


async def http_matrix(m: Matrix, ws: Workspace, results: Results, sink: Process) -> None:
    print("ceiling: raw Starlette + asyncpg", flush=True)
    await ceiling(m, ws, results, workers=m.workers, conns=m.connections)
    for backend in m.backends:
        for w in m.workers:
            print(f"service: {backend}, {w} worker(s)", flush=True)
            async with deployment.deploy(
                backend, w, ws, seed_users=m.seed_users, token_users=m.token_users
            ) as d:
                target = Target(
                    "service", backend, w, d.base_url, d.api, d.worker,
                    None if backend == "sqlite" else database.PG_DATABASE,
                )  # fmt: skip
                loads = scenario_loads(d, ws)
                for c in m.connections:
                    for scenario in m.scenarios:
                        point = await measure(
                            target,
                            scenario,
                            loads[scenario],
                            connections=c,
                            duration_s=m.duration_s,
                            warmup_s=m.warmup_s,
                            quiet_wait_s=m.quiet_wait_s,
                            nonce=now_nonce(),
                            extra_pids=[*sink.pids(), *system.processes_named("redis-server")],
                        )
                        if scenario == "register":
                            # The welcome jobs of this point must not run into the next one.
                            point["jobs_drain_s"] = await d.wait_for_jobs()
                        results.add("points", point)
                if backend == "pg-embedded" and w == 1:
                    await profiles(m, ws, results, d, loads)
                counts = await database.job_counts(d.database_url)
            results.add(
                "configs",
                {
                    "kind": "service",
                    "backend": backend,
                    "workers": w,
                    "api": memory(d.api),
                    "worker": memory(d.worker),
                    "jobs_by_status": counts,
                    "app_sha256": d.app_digest,
                },
            )
    if "register" in m.scenarios:
        await welcome_job_cost(m, ws, results)
    print("ceiling again, for drift", flush=True)
    before = len(results.data["points"])
    await ceiling(m, ws, results, workers=(1,), conns=(m.connections[0],))
    for point in results.data["points"][before:]:
        point["kind"] = "baseline-end"
    results.data["configs"][-1]["kind"] = "baseline-end"
    results.save()


async def welcome_job_cost(m: Matrix, ws: Workspace, results: Results) -> None:
    """Register with and without its welcome job (enqueue patched out by bench/noop_jobs.py),
    alternated A B A B so a drift of the machine hits both alike."""
    variants = [("register", {}), ("register_no_job", {"BENCH_SKIP_WELCOME_JOB": "1"})]
    for round_ in range(1 if m.quick else 2):
        for scenario, env in variants:
            print(f"welcome job cost: {scenario}, round {round_ + 1}", flush=True)
            async with deployment.deploy(
                "pg-embedded", 1, ws, seed_users=100, token_users=0, extra_env=env
            ) as d:
                target = Target(
                    "job-cost", "pg-embedded", 1, d.base_url, d.api, None, database.PG_DATABASE
                )
                point = await measure(
                    target,
                    scenario,
                    Load("register", "/api/v1/auth/register", password=database.PASSWORD),
                    connections=m.connections[0],
                    duration_s=m.duration_s,
                    warmup_s=m.warmup_s,
                    quiet_wait_s=m.quiet_wait_s,
                    nonce=now_nonce(),
                    extra_pids=[],
                )
                point["jobs_drain_s"] = await d.wait_for_jobs()
                point["jobs_by_status"] = await database.job_counts(d.database_url)
                point["app_sha256"] = d.app_digest
                results.add("points", point)


async def profiles(
    m: Matrix, ws: Workspace, results: Results, d: Deployment, loads: dict[str, Load]
) -> None:
    for scenario in (s for s in ("users_me", "register") if s in m.scenarios):
        print(f"  profiling {scenario} (py-spy, {m.profile_s:g} s)", flush=True)
        await asyncio.sleep(0)
        summary = await asyncio.to_thread(
            profiling.record_under_load,
            d.api.pid,
            d.base_url,
            loads[scenario],
            connections=m.connections[0],
            seconds=m.profile_s,
            out=RESULTS / "profiles" / f"{results.path.stem}-{scenario}.txt",
        )
        if scenario == "register":
            await d.wait_for_jobs()
        results.add("profiles", {"scenario": scenario, "backend": d.backend, **summary})


async def welcome_latency(m: Matrix, ws: Workspace, results: Results) -> None:
    for rate in m.latency_rates:
        for backend in ("pg-embedded", "pg-celery"):
            print(f"welcome email latency: {backend}, {rate:g}/s", flush=True)
            await _welcome_latency_at(m, ws, results, backend, rate)


async def _welcome_latency_at(
    m: Matrix, ws: Workspace, results: Results, backend: str, rate: float
) -> None:
    async with deployment.deploy(backend, 1, ws, seed_users=100, token_users=0) as d:
        item = await jobs_bench.welcome_latency(
            d, rate=rate, seconds=m.latency_s, nonce=now_nonce(), mail_log=ws.mail_log
        )
        for process in d.processes():
            process.record_peak_rss()
        item["api"] = memory(d.api)
        item["worker"] = memory(d.worker)
        item["app_sha256"] = d.app_digest
        print(f"  {item['commit_to_smtp']}  missing {item['emails_missing']}", flush=True)
        results.add("latency", item)


async def job_throughput(m: Matrix, ws: Workspace, results: Results) -> None:
    noop = {"BENCH_NOOP_JOB": "1"}
    for n in m.job_processes:
        print(f"raw Celery no-op: {n} process(es)", flush=True)
        deployment.flush_broker()
        worker = services.start_raw_celery(concurrency=n, logs=ws.logs)
        try:
            item = jobs_bench.raw_celery_throughput(worker, count=m.noop_jobs, processes=n)
        finally:
            worker.stop()
        print(f"  {item['jobs_per_s']} jobs/s", flush=True)
        results.add("throughput", item)
    runs: list[tuple[str, int, int, dict[str, str]]] = [
        ("pg-embedded", n, 0, noop) for n in m.job_processes
    ]
    runs += [("pg-celery", 1, n, noop) for n in m.job_processes]
    for backend, api_workers, worker_processes, env in runs:
        label = (
            f"embedded, {api_workers} API process(es)"
            if backend == "pg-embedded"
            else f"Celery, {worker_processes} worker process(es)"
        )
        print(f"service no-op jobs: {label}", flush=True)
        async with deployment.deploy(
            backend,
            api_workers,
            ws,
            seed_users=10,
            token_users=0,
            worker_processes=worker_processes or None,
            extra_env=env,
        ) as d:
            # Profile the process that runs the jobs: the API, or one Celery pool process.
            runner = d.api.pid if d.worker is None else d.worker.pids()[-1]
            profile_file = RESULTS / "profiles" / f"{results.path.stem}-jobs-{backend}.txt"
            profiled = (worker_processes or api_workers) == 1
            item = await jobs_bench.service_noop_throughput(
                d,
                count=m.noop_jobs,
                label=label,
                profile=(runner, profile_file) if profiled else None,
            )
            item["processes"] = worker_processes or api_workers
            item["app_sha256"] = d.app_digest
            if profiled:
                results.add(
                    "profiles",
                    {
                        "scenario": f"jobs_{backend}",
                        "backend": backend,
                        **profiling.summarise(profile_file),
                    },
                )
        print(f"  {item['jobs_per_s']} jobs/s ({item['flowing_jobs_per_s']} once flowing)")
        results.add("throughput", item)


async def main_async(m: Matrix) -> Results:
    ensure_wrk()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    results = Results(m)
    mail_log = WORK / "mail.jsonl"
    sink = services.start_smtp_sink(mail_log, logs=WORK / "logs")
    ws = Workspace(WORK, sink.port, mail_log)
    sections: dict[str, Callable[[], Any]] = {
        "argon2": lambda: argon2(m, results),
        "http": lambda: http_matrix(m, ws, results, sink),
        "latency": lambda: welcome_latency(m, ws, results),
        "throughput": lambda: job_throughput(m, ws, results),
        "hostile": lambda: hostile_traffic(m, ws, results),
        "tracing": lambda: tracing_cost(m, ws, results),
        "size": lambda: cost_against_size(m, results),
        "pgbouncer": lambda: behind_pgbouncer(m, ws, results),
    }
    try:
        for part in m.parts:
            started = time.monotonic()
            await sections[part]()
            results.data.setdefault("section_seconds", {})[part] = round(time.monotonic() - started)
            results.save()
    finally:
        sink.stop()
        results.data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results.save()
    return results


async def hostile_traffic(m: Matrix, ws: Workspace, results: Results) -> None:
    print("hostile traffic: trickling uploads, wrong logins, random paths", flush=True)
    results.data["hostile"] = await hostile.run(
        ws, seconds=m.hostile_s, quiet_wait_s=m.quiet_wait_s
    )
    results.save()


async def behind_pgbouncer(m: Matrix, ws: Workspace, results: Results) -> None:
    print("behind PgBouncer: 8 API processes, 10 server connections, against direct", flush=True)
    results.data["pgbouncer"] = await pgbouncer.run(m, ws)
    print(f"  {results.data['pgbouncer']['ratios']}", flush=True)
    results.save()


async def tracing_cost(m: Matrix, ws: Workspace, results: Results) -> None:
    results.data["tracing"] = await tracing_bench.run(
        ws=ws,
        rounds=2 if m.quick else 3,  # off on off on: a drift of the machine shows
        connections=m.connections[0],
        duration_s=m.duration_s,
        warmup_s=m.warmup_s,
        quiet_wait_s=m.quiet_wait_s,
        trace_out=RESULTS / f"trace-{results.path.stem}.json",
    )
    results.save()


async def cost_against_size(m: Matrix, results: Results) -> None:
    print("cost against size: pages, enqueue and claim, a simulated month", flush=True)
    results.data["size"] = await size.run(m.quick)
    results.save()


async def argon2(m: Matrix, results: Results) -> None:
    print(f"argon2: {m.argon2_iterations} hashes", flush=True)
    system.wait_for_quiet(m.quiet_wait_s)
    results.data["argon2"] = argon2_bound.measure(m.argon2_iterations)
    print(f"  {results.data['argon2']}", flush=True)
    results.save()


def main() -> None:
    m = from_environment()
    started = time.monotonic()
    results = asyncio.run(main_async(m))
    results.data["total_seconds"] = round(time.monotonic() - started)
    results.save()
    written = report.write(results.data, results.path)
    print(f"results: {results.path.relative_to(ROOT)}\nreport: {written.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
