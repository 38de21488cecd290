"""The hostile part: a normal client's latency while strangers attack the service.

Attack: 100 uploads that trickle a byte every half second (reconnecting when the service drops
them), and 1,000 wrong logins a minute, both spread over 10 loopback source addresses
(127.0.0.2-11). The normal client (127.0.0.1) registers now and then and reads its own account
in a loop: its p50/p99 and errors are compared with the same run without the attack. Then
10,000 random paths, and the number of metric series before and after them.
"""

import asyncio
import contextlib
import random
import string
import time
import uuid
from typing import Any

import httpx

from bench import database, deployment, system
from bench.deployment import Workspace
from bench.stats import summary_ms

SOURCES = [f"127.0.0.{i}" for i in range(2, 12)]
TRICKLERS = 100
WRONG_LOGINS_PER_MIN = 1000
READS_PER_S = 20.0
REGISTER_EVERY_S = 7.0  # within the per-client registration limit (10/minute)
RANDOM_PATHS = 10_000


async def _normal_client(base_url: str, seconds: float) -> dict[str, Any]:
    """Reads at a steady rate, a registration now and then; every answer timed."""
    reads: list[float] = []
    registers: list[float] = []
    errors: dict[str, int] = {}

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        email = f"normal-{uuid.uuid4().hex[:10]}@bench.example.com"
        body = {"email": email, "name": "Normal", "password": database.PASSWORD}
        await client.post("/api/v1/auth/register", json=body)
        form = {"username": email, "password": database.PASSWORD}
        token = (await client.post("/api/v1/auth/token", data=form)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        started = time.monotonic()
        next_register = started
        i = 0
        while (now := time.monotonic()) < started + seconds:
            try:
                if now >= next_register:
                    next_register += REGISTER_EVERY_S
                    body["email"] = f"normal-{uuid.uuid4().hex[:10]}@bench.example.com"
                    t = time.perf_counter()
                    response = await client.post("/api/v1/auth/register", json=body)
                    registers.append(time.perf_counter() - t)
                    if response.status_code != 201:
                        failed(f"register {response.status_code}")
                t = time.perf_counter()
                response = await client.get("/api/v1/users/me", headers=headers)
                reads.append(time.perf_counter() - t)
                if response.status_code != 200:
                    failed(f"read {response.status_code}")
            except httpx.HTTPError as exc:
                failed(type(exc).__name__)
            i += 1
            await asyncio.sleep(max(0.0, started + i / READS_PER_S - time.monotonic()))
    return {"reads": summary_ms(reads), "registers": summary_ms(registers), "errors": errors}


async def _trickler(port: int, source: str, stop: asyncio.Event, tally: dict[str, int]) -> None:
    head = (
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            tally["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        tally["connections"] += 1
        with contextlib.suppress(OSError):
            writer.write(head)
            while not stop.is_set() and not reader.at_eof():
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        answer = await reader.read(64)
                        if answer.startswith(b"HTTP/1.1 408"):
                            tally["answered_408"] += 1
                        if not answer:
                            break
                writer.write(b" ")
        writer.close()


async def _wrong_logins(base_url: str, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """WRONG_LOGINS_PER_MIN, open loop, round-robin over the sources, seeded emails."""
    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            timeout=30,
            transport=httpx.AsyncHTTPTransport(local_address=source),
        )
        for source in SOURCES
    ]
    interval = 60.0 / WRONG_LOGINS_PER_MIN
    pending: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, n: int) -> None:
        form = {"username": f"seed-{n % 50}@bench.example.com", "password": "wrong-password-1"}
        try:
            response = await client.post("/api/v1/auth/token", data=form)
            key = str(response.status_code)
        except httpx.HTTPError as exc:
            key = type(exc).__name__
        tally[key] = tally.get(key, 0) + 1

    started = time.monotonic()
    n = 0
    while not stop.is_set():
        task = asyncio.create_task(one(clients[n % len(clients)], n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
        await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
    await asyncio.gather(*pending)
    for client in clients:
        await client.aclose()


async def _attacked(base_url: str, port: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    trickle = {"connections": 0, "connect_failed": 0, "answered_408": 0}
    logins: dict[str, int] = {}
    attackers = [
        asyncio.create_task(_trickler(port, SOURCES[i % len(SOURCES)], stop, trickle))
        for i in range(TRICKLERS)
    ]
    attackers.append(asyncio.create_task(_wrong_logins(base_url, stop, logins)))
    await asyncio.sleep(2)  # the uploads are all open before the normal client starts
    try:
        normal = await _normal_client(base_url, seconds)
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    return {"normal": normal, "trickling_uploads": trickle, "wrong_logins": logins}


def _series(text: str) -> set[str]:
    return {
        line.rsplit(" ", 1)[0]
        for line in text.splitlines()
        if line.startswith(("http_requests_total{", "http_request_duration_seconds_count{"))
    }


async def _random_paths(base_url: str) -> dict[str, Any]:
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "-_~%"
    shapes = ["/admin/statics/{}", "/admin/user/edit/{}", "/admin/{}", "/api/v1/users/{}", "/{}"]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for shape in shapes:  # each kind of answer once, /metrics's own included
            await client.get(shape.format("warm"))
        await client.get("/metrics")
        before = _series((await client.get("/metrics")).text)

        async def ask(count: int) -> None:
            for _ in range(count):
                word = "".join(rng.choices(alphabet, k=rng.randint(1, 24)))
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(rng.choice(shapes).format(word))

        await asyncio.gather(*(ask(RANDOM_PATHS // 10) for _ in range(10)))
        after = _series((await client.get("/metrics")).text)
    return {
        "paths": RANDOM_PATHS,
        "series_before": len(before),
        "series_after": len(after),
        "new_series": sorted(after - before),
    }


async def run(ws: Workspace, *, seconds: float, quiet_wait_s: float) -> dict[str, Any]:
    """One pg-embedded service with its rate limits on, as deployed: calm, then attacked."""
    env = {"RATE_LIMIT_ENABLED": "true"}
    async with deployment.deploy(
        "pg-embedded", 1, ws, seed_users=100, token_users=0, extra_env=env
    ) as d:
        quiet = system.wait_for_quiet(quiet_wait_s)
        print(f"  calm: normal client alone for {seconds:g} s", flush=True)
        calm = await _normal_client(d.base_url, seconds)
        print(f"  attacked: {TRICKLERS} trickling uploads, {WRONG_LOGINS_PER_MIN}/min wrong logins")
        attacked = await _attacked(d.base_url, d.api.port, seconds)
        print(f"  {RANDOM_PATHS:,} random paths", flush=True)
        series = await _random_paths(d.base_url)
    item = {
        "backend": "pg-embedded",
        "seconds": seconds,
        "load_1m": quiet.load_1m,
        "calm": calm,
        "attacked": attacked,
        "metric_series": series,
    }
    for phase in ("calm", "attacked"):
        normal = calm if phase == "calm" else attacked["normal"]
        print(f"  {phase}: reads {normal['reads']} errors {normal['errors']}", flush=True)
    print(f"  series {series}", flush=True)
    return item


def render(item: dict[str, Any] | None) -> list[str]:
    """The report's section, from run()'s result."""
    if not item:
        return []
    calm, attacked = item["calm"], item["attacked"]["normal"]

    def row(name: str, normal: dict[str, Any]) -> list[str]:
        errors = sum(normal["errors"].values())
        return [
            name,
            f"{normal['reads']['count']}",
            f"{normal['reads']['p50_ms']} / {normal['reads']['p99_ms']}",
            f"{normal['registers']['count']}",
            f"{normal['registers']['p50_ms']} / {normal['registers']['p99_ms']}",
            f"{errors} {normal['errors'] or ''}".strip(),
        ]

    ratio = (
        attacked["reads"]["p99_ms"] / calm["reads"]["p99_ms"]
        if calm["reads"]["p99_ms"] and attacked["reads"]["p99_ms"]
        else None
    )
    series = item["metric_series"]
    lines = [
        "",
        "## Hostile traffic: a normal client while strangers attack",
        "",
        f"One pg-embedded service (1 process, rate limits on). For {item['seconds']:g} s a "
        f"normal client from 127.0.0.1 reads its account at {READS_PER_S:g}/s and registers "
        f"every {REGISTER_EVERY_S:g} s; then the same again while {TRICKLERS} uploads trickle "
        "a byte every 0.5 s (reconnecting when dropped) and "
        f"{WRONG_LOGINS_PER_MIN:,} wrong logins a minute arrive, both from 127.0.0.2-11.",
        "",
        "| phase | reads | read p50 / p99 ms | registrations | register p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(row("calm", calm)) + " |",
        "| " + " | ".join(row("attacked", attacked)) + " |",
        "",
        f"Read p99 attacked / calm: {ratio:.2f}x (goal ≤ 1.5x, 0 errors)."
        if ratio
        else "Read p99 ratio: n/a.",
        f"Trickling uploads: {item['attacked']['trickling_uploads']}; wrong logins by answer: "
        f"{item['attacked']['wrong_logins']}.",
        f"Metric series (`http_requests_total` and the latency histogram): "
        f"{series['series_before']} before {series['paths']:,} random paths, "
        f"{series['series_after']} after (goal: unchanged)"
        + (f"; new: {', '.join(series['new_series'])}." if series.get("new_series") else "."),
    ]
    return lines
