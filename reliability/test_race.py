"""The same email registered by 24 clients at once, 50 times, against a real server on PostgreSQL.

Each round's 24 requests differ only in the case of the address (emails are unique whatever
their case) and carry no Idempotency-Key: they are 24 different clients. Every round must end
with exactly one account and one welcome job, one 201 and 23 409s, and nothing else.
"""

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from reliability.harness import Deployment
from reliability.load import PASSWORD
from reliability.results import record
from reliability.verify import connect

pytestmark = pytest.mark.reliability

ROUNDS = 50
CLIENTS = 24


def variants(local: str) -> list[str]:
    """CLIENTS spellings of one address, differing in case."""
    spellings = [local, local.upper(), local.title(), local.swapcase()]
    return [f"{spellings[i % len(spellings)]}@Example.COM" for i in range(CLIENTS)]


async def race(client: httpx.AsyncClient, local: str) -> Counter[str]:
    gate = asyncio.Event()

    async def one(email: str) -> str:
        await gate.wait()
        body = {"email": email, "name": "Racer", "password": PASSWORD}
        try:
            response = await client.post("/api/v1/auth/register", json=body)
        except httpx.TransportError as exc:
            return type(exc).__name__
        return str(response.status_code)

    tasks = [asyncio.create_task(one(email)) for email in variants(local)]
    await asyncio.sleep(0)
    gate.set()
    return Counter(await asyncio.gather(*tasks))


async def test_same_email_race(deploy: Deployment) -> None:
    api = await deploy.start_api()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    rounds: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=api.base_url, timeout=120, limits=limits) as client:
        for number in range(ROUNDS):
            local = f"racer{number}"
            answers = await race(client, local)
            connection = await connect(deploy.dsn)
            try:
                accounts = await connection.fetchval(
                    "SELECT count(*) FROM users WHERE lower(email) = $1", f"{local}@example.com"
                )
                jobs = await connection.fetchval(
                    "SELECT count(*) FROM jobs j JOIN users u"
                    " ON u.id = (j.payload->>'user_id')::uuid WHERE lower(u.email) = $1",
                    f"{local}@example.com",
                )
            finally:
                await connection.close()
            rounds.append({"answers": dict(answers), "accounts": accounts, "jobs": jobs})
    good = [r for r in rounds if r["accounts"] == 1 and r["jobs"] == 1]
    exact = [r for r in good if r["answers"] == {"201": 1, "409": CLIENTS - 1}]
    totals: Counter[str] = Counter()
    for r in rounds:
        totals.update(r["answers"])
    figures = {
        "rounds": ROUNDS,
        "clients_per_round": CLIENTS,
        "rounds_with_one_account": len(good),
        "rounds_answered_one_201_and_409s": len(exact),
        "answers": dict(sorted(totals.items())),
        "bad_rounds": [r for r in rounds if r not in exact][:10],
        "verdict": "ok" if len(exact) == ROUNDS else "FAILED",
    }
    record("registration-race", figures)
    assert len(good) == ROUNDS, figures["bad_rounds"]
    assert len(exact) == ROUNDS, figures["bad_rounds"]
