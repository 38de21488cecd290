"""The `pgbouncer` part: 8 API processes through PgBouncer with 10 server connections, against
the same 8 processes straight to PostgreSQL, at the same total concurrency.

PgBouncer runs in transaction mode (tests/pgbouncer.py, Debian's package) and the service with
DB_TRANSACTION_POOLER=true and DATABASE_LISTEN_URL the direct URL. The two variants alternate
(direct, pgbouncer, direct, pgbouncer ...) on one seeded database, so a drift of the machine
hits both alike; each ratio is pgbouncer / direct of the summed rounds.
"""

import os
from pathlib import Path
from typing import Any

from bench import database, deployment, services
from bench.deployment import Workspace
from bench.load import Target, measure, now_nonce
from bench.matrix import Matrix
from bench.wrk import Load
from tests.pgbouncer import PgBouncer

API_PROCESSES = 8
SERVER_CONNECTIONS = 10
# Per API process: 8 x 6 = 48 client connections, which PostgreSQL (max_connections 100 by
# default) also takes directly; through PgBouncer they share SERVER_CONNECTIONS.
DB_POOL_SIZE = 6
CONNECTIONS = 64  # wrk's, in both variants
SCENARIOS = ("users_me", "register")
VARIANTS = ("direct", "pgbouncer")
# A database of its own: other parts (and other checkouts' runs) recreate accounts_bench.
DATABASE = "accounts_bench_pgbouncer"


def _loads(ws: Workspace, tokens: list[str]) -> dict[str, Load]:
    me = deployment.write_requests(
        ws.root / "requests" / "pgbouncer-me.txt", [f"/api/v1/users/me\t{t}" for t in tokens]
    )
    return {
        "users_me": Load("get", file=me),
        "register": Load("register", "/api/v1/auth/register", password=database.PASSWORD),
    }


async def run(m: Matrix, ws: Workspace) -> dict[str, Any]:
    url = await database.recreate_pg(DATABASE)
    base = services.service_environment(
        url, data_dir=ws.root / "data", smtp_port=ws.smtp_port, DB_POOL_SIZE=str(DB_POOL_SIZE)
    )
    database.migrate(url, base)
    seeded = await database.seed(url, users=m.seed_users, admins=m.token_users)
    points: list[dict[str, Any]] = []
    with PgBouncer(url, pool_size=SERVER_CONNECTIONS) as bouncer:
        variants = {
            "direct": base,
            "pgbouncer": base
            | {
                "DATABASE_URL": bouncer.url(DATABASE),
                "DB_TRANSACTION_POOLER": "true",
                "DATABASE_LISTEN_URL": url,
            },
        }
        for round_ in range(2 if m.quick else 3):
            for variant, env in variants.items():
                print(f"pgbouncer: {variant}, round {round_ + 1}", flush=True)
                bouncer_pid = bouncer.pid if variant == "pgbouncer" else None
                points += await _measure(m, ws, variant, env, seeded.admins, round_, bouncer_pid)
    return {
        "api_processes": API_PROCESSES,
        "server_connections": SERVER_CONNECTIONS,
        "db_pool_size": DB_POOL_SIZE,
        "connections": CONNECTIONS,
        "points": points,
        "ratios": ratios(points),
    }


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (PgBouncer's own, in its variant)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    m: Matrix,
    ws: Workspace,
    variant: str,
    env: dict[str, str],
    admins: list[str],
    round_: int,
    bouncer_pid: int | None,
) -> list[dict[str, Any]]:
    api = services.start_api(env, workers=API_PROCESSES, logs=ws.logs, name=f"api-{variant}")
    try:
        base_url = f"http://127.0.0.1:{api.port}"
        loads = _loads(ws, await deployment.login(base_url, admins))
        target = Target("pgbouncer", variant, API_PROCESSES, base_url, api, None, DATABASE)
        points = []
        for scenario in SCENARIOS:
            bouncer_before = _cpu_seconds(bouncer_pid)
            point = await measure(
                target,
                scenario,
                loads[scenario],
                connections=CONNECTIONS,
                duration_s=m.duration_s,
                warmup_s=m.warmup_s,
                quiet_wait_s=m.quiet_wait_s,
                nonce=now_nonce(),
                extra_pids=[],
            )
            point["round"] = round_ + 1
            # Approximate: the warmup's share is in it too, so it errs against PgBouncer.
            point["pgbouncer_cpu_us"] = round(
                (_cpu_seconds(bouncer_pid) - bouncer_before) / max(point["requests"], 1) * 1e6, 1
            )
            points.append(point)
        return points
    finally:
        api.stop()


def ratios(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario: requests/s of each variant over its rounds, pgbouncer/direct, errors."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        mine = [p for p in points if p["scenario"] == scenario]

        def rate(variant: str, mine: list[dict[str, Any]] = mine) -> float:
            chosen = [p for p in mine if p["backend"] == variant]
            seconds = sum(p["duration_s"] for p in chosen)
            answered = sum(p["requests"] - p["non_2xx"] for p in chosen)
            return answered / seconds if seconds else 0.0

        def cpu_us(variant: str, mine: list[dict[str, Any]] = mine) -> float:
            """API + PostgreSQL (+ PgBouncer) CPU per request, weighted by requests."""
            chosen = [p for p in mine if p["backend"] == variant]
            requests = sum(p["requests"] for p in chosen)
            spent = sum(
                (p["api_cpu_us"] + p["db_cpu_us"] + p.get("pgbouncer_cpu_us", 0)) * p["requests"]
                for p in chosen
            )
            return spent / requests if requests else 0.0

        direct, pooled = rate("direct"), rate("pgbouncer")
        direct_cpu, pooled_cpu = cpu_us("direct"), cpu_us("pgbouncer")
        out[scenario] = {
            "direct_rps": round(direct, 1),
            "pgbouncer_rps": round(pooled, 1),
            "ratio": round(pooled / direct, 3) if direct else None,
            "direct_cpu_us": round(direct_cpu),
            "pgbouncer_cpu_us": round(pooled_cpu),
            "ratio_by_cpu": round(direct_cpu / pooled_cpu, 3) if pooled_cpu else None,
            "errors": {v: sum(p["errors"] for p in mine if p["backend"] == v) for v in VARIANTS},
        }
    return out


def render(item: dict[str, Any] | None) -> list[str]:
    """The report's section, from run()'s result."""
    if not item:
        return []
    rounds = max((p["round"] for p in item["points"]), default=0)
    lines = [
        "",
        "## Behind PgBouncer: 8 API processes, 10 server connections",
        "",
        f"{item['api_processes']} API processes (DB_POOL_SIZE {item['db_pool_size']} each) "
        f"through PgBouncer in transaction mode with {item['server_connections']} server "
        "connections (DB_TRANSACTION_POOLER=true), against the same processes straight to "
        f"PostgreSQL; wrk with {item['connections']} connections in both, {rounds} rounds "
        "alternated. Target: pgbouncer/direct >= 0.9, 0 errors. CPU per request counts the API "
        "processes, PostgreSQL and PgBouncer: on a busy machine it says more than req/s.",
        "",
    ]
    rows = [
        [
            scenario,
            fmt(r["direct_rps"]),
            fmt(r["pgbouncer_rps"]),
            fmt(r["ratio"], 3),
            f"{r.get('direct_cpu_us', '-')} / {r.get('pgbouncer_cpu_us', '-')}",
            fmt(r.get("ratio_by_cpu"), 3),
            f"{r['errors']['direct']} / {r['errors']['pgbouncer']}",
            "met"
            if r["ratio"] is not None and r["ratio"] >= 0.9 and not r["errors"]["pgbouncer"]
            else "MISSED",
        ]
        for scenario, r in ratios(item["points"]).items()
    ]
    return lines + table(
        [
            "scenario",
            "direct req/s",
            "pgbouncer req/s",
            "ratio",
            "CPU µs/request direct / pgbouncer",
            "ratio by CPU",
            "errors direct / pgbouncer",
            "target",
        ],
        rows,
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
