"""The cost of tracing: GET /api/v1/users/me and register with tracing off, then on at 100%
sampling to a local OTLP/HTTP receiver (bench/tracing_receiver.py), alternated off on off on so
a drift of the machine hits both alike. One pg-embedded API process; the figures are per
request, so the ratio on/off is what to read."""

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench import database, deployment, services, system
from bench.deployment import Workspace
from bench.load import Load, Target, measure, now_nonce

SCENARIOS = ("users_me", "register")
REGISTER = "POST /api/v1/auth/register"


def tracing_env(port: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "accounts-bench",
    }


async def run(
    *, ws: Workspace, rounds: int, connections: int, duration_s: float, warmup_s: float,
    quiet_wait_s: float, trace_out: Path,
) -> dict[str, Any]:  # fmt: skip
    points: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    kept = False
    for round_ in range(rounds):
        for variant in ("off", "on"):
            print(f"tracing {variant}, round {round_ + 1}", flush=True)
            receiver, out = _start_receiver(ws, f"{variant}-{round_}")
            env = tracing_env(receiver.port) if variant == "on" else {}
            try:
                async with deployment.deploy(
                    "pg-embedded", 1, ws, seed_users=100, token_users=connections, extra_env=env
                ) as d:
                    target = Target(
                        "tracing", "pg-embedded", 1, d.base_url, d.api, None, database.PG_DATABASE
                    )
                    loads = {
                        "users_me": Load(
                            "get", file=deployment.users_me_requests(d, ws.root / "me.txt")
                        ),
                        "register": Load(
                            "register", "/api/v1/auth/register", password=database.PASSWORD
                        ),
                    }
                    for scenario in SCENARIOS:
                        point = await measure(
                            target, scenario, loads[scenario], connections=connections,
                            duration_s=duration_s, warmup_s=warmup_s, quiet_wait_s=quiet_wait_s,
                            nonce=now_nonce(), extra_pids=receiver.pids(),
                        )  # fmt: skip
                        if scenario == "register":
                            point["jobs_drain_s"] = await d.wait_for_jobs()
                        point["tracing"] = variant
                        point["round"] = round_ + 1
                        points.append(point)
            finally:
                receiver.popen.send_signal(signal.SIGTERM)
                await asyncio.to_thread(receiver.popen.wait, 30)
            exported = json.loads(await asyncio.to_thread(out.read_text))
            received.append({"variant": variant, "spans": exported["spans"]})
            if variant == "on" and not kept:
                kept = _keep_one_registration(exported["traces"], trace_out)
    return {"points": points, "received": received, "trace_file": trace_out.name}


def _start_receiver(ws: Workspace, label: str) -> tuple[services.Process, Path]:
    port = system.free_port()
    out = ws.root / f"spans-{label}.json"
    argv = [sys.executable, "-m", "bench.tracing_receiver", str(port), str(out)]
    env = {**services.clean_environment(), "PYTHONPATH": str(services.ROOT)}
    process = services.start(f"otlp-{label}", argv, env, ws.logs, port)
    services.wait_until(process, services.port_open(port))
    return process, out


def _keep_one_registration(traces: dict[str, list[dict[str, Any]]], out: Path) -> bool:
    """The first registration whose trace reached the SMTP delivery, for the README's picture."""
    for spans in traces.values():
        names = {span["name"] for span in spans}
        if REGISTER in names and "smtp send" in names:
            out.write_text(json.dumps(spans, indent=1) + "\n")
            return True
    return False


def render(item: dict[str, Any] | None) -> list[str]:
    if not item:
        return []
    lines = [
        "",
        "## Tracing: its cost per request",
        "",
        "One pg-embedded API process, tracing off, then on (100% sampling, OTLP/HTTP to a local "
        "receiver that decodes every batch); off and on alternate, each a deployment of its own. "
        "Spans per variant: "
        + ", ".join(f"{r['variant']} {r['spans']:,}" for r in item["received"])
        + ".",
        "",
        "| scenario | tracing | round | req/s | p50 ms | p99 ms | API CPU µs/req | errors | "
        "load / other cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in item["points"]:
        lines.append(
            f"| {p['scenario']} | {p['tracing']} | {p['round']} | {p['rps']:,.1f} | "
            f"{p['p50_ms']} | {p['p99_ms']} | {p['api_cpu_us']:,.0f} | {p['errors']} | "
            f"{p['load_1m']:.2f} / {p['other_cores']:.2f} |"
        )
    lines += [
        "",
        "Ratios over the rounds where neither point had errors (a point whose requests timed out "
        "measured the machine, not the service):",
        "",
        "| scenario | rounds | on / off, req/s | on / off, API CPU per request |",
        "|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        mine = [p for p in item["points"] if p["scenario"] == scenario]
        clean = {
            r for r in {p["round"] for p in mine}
            if all(p["errors"] == 0 for p in mine if p["round"] == r)
        }  # fmt: skip
        off = [p for p in mine if p["tracing"] == "off" and p["round"] in clean]
        on = [p for p in mine if p["tracing"] == "on" and p["round"] in clean]
        if off and on:
            rps = sum(p["rps"] for p in on) / sum(p["rps"] for p in off)
            cpu = sum(p["api_cpu_us"] for p in on) / sum(p["api_cpu_us"] for p in off)
            rounds = ", ".join(str(r) for r in sorted(clean))
            lines.append(f"| {scenario} | {rounds} | {rps:.2f} | {cpu:.2f} |")
    return lines
