"""A paced stream of registrations, each retried the way a careful client retries.

Every registration has its own email and Idempotency-Key. A 503, a connection that fails or
drops, an answer that never comes, a 409 "key still in flight" and any other 5xx are retried
with the same key and body after a short backoff, until the registration's deadline; the
server answers a retry of a committed request with the first response, so a retry can never
make a second account. Every attempt is kept, with its X-Request-ID, for the evidence.
"""

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

PASSWORD = "correct horse battery"
IN_FLIGHT_DETAIL = "still being processed"


@dataclass
class Attempt:
    request_id: str
    base_url: str
    started: float
    finished: float | None = None
    status: int | None = None
    error: str | None = None  # the transport error's class name

    @property
    def outcome(self) -> str:
        if self.status is not None:
            return str(self.status)
        return self.error or "pending"


@dataclass
class Registration:
    index: int
    email: str
    key: str
    attempts: list[Attempt] = field(default_factory=list)
    status: int | None = None  # the final answer
    body: dict[str, object] | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 201


def classify(response: httpx.Response) -> str:
    """'ok', 'retry' or 'final' for an HTTP answer."""
    if response.status_code == 201:
        return "ok"
    if response.status_code >= 500:
        return "retry"
    if response.status_code == 409 and IN_FLIGHT_DETAIL in response.text:
        return "retry"
    return "final"


class RegistrationStream:
    """`count` registrations started at `rate` per second (None: as fast as `concurrency` allows),
    spread round-robin over `base_urls`; at most `concurrency` in flight."""

    def __init__(
        self,
        base_urls: list[str],
        *,
        count: int,
        prefix: str,
        rate: float | None = 10.0,
        concurrency: int = 48,
        deadline_s: float = 240.0,
        attempt_timeout_s: float = 30.0,
    ) -> None:
        self.base_urls = base_urls
        self.rate = rate
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        run = uuid.uuid4().hex[:6]
        self.registrations = [
            Registration(i, f"{prefix}-{run}-{i}@example.com", uuid.uuid4().hex)
            for i in range(count)
        ]
        self.in_flight: dict[str, Attempt] = {}
        self.answered = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self._progress = asyncio.Event()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=16)
        timeout = httpx.Timeout(self.attempt_timeout_s, connect=5.0)
        clients = {
            url: httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)
            for url in self.base_urls
        }
        slots = asyncio.Semaphore(self.concurrency)
        tasks: list[asyncio.Task[None]] = []
        self.started_at = time.monotonic()
        try:
            for registration in self.registrations:
                if self.rate:
                    due = self.started_at + registration.index / self.rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                await slots.acquire()
                url = self.base_urls[registration.index % len(self.base_urls)]
                task = asyncio.create_task(self._register(clients[url], registration))
                task.add_done_callback(lambda _: slots.release())
                tasks.append(task)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for client in clients.values():
                await client.aclose()
            self.finished_at = time.monotonic()

    async def wait_answered(self, count: int, within: float = 300.0) -> None:
        """Until `count` registrations have their final answer (at most `within` seconds)."""
        async with asyncio.timeout(within):
            while self.answered < count:
                self._progress.clear()
                await self._progress.wait()

    async def _register(self, client: httpx.AsyncClient, registration: Registration) -> None:
        body = {"email": registration.email, "name": "Reliability", "password": PASSWORD}
        give_up = time.monotonic() + self.deadline_s
        backoff = 0.25
        while True:
            number = len(registration.attempts) + 1
            attempt = Attempt(
                f"r{registration.index}-{registration.key[:8]}-{number}",
                str(client.base_url),
                time.monotonic(),
            )
            registration.attempts.append(attempt)
            self.in_flight[attempt.request_id] = attempt
            headers = {"Idempotency-Key": registration.key, "X-Request-ID": attempt.request_id}
            verdict = "retry"
            wait = backoff
            try:
                response = await client.post("/api/v1/auth/register", json=body, headers=headers)
            except httpx.TransportError as exc:
                attempt.error = type(exc).__name__
            else:
                attempt.status = response.status_code
                verdict = classify(response)
                if verdict != "retry":
                    registration.status = response.status_code
                    if response.headers.get("content-type", "").startswith("application/json"):
                        registration.body = response.json()
                retry_after = response.headers.get("Retry-After", "")
                if verdict == "retry" and retry_after.isdigit():
                    wait = min(float(retry_after), 5.0)
            finally:
                attempt.finished = time.monotonic()
                self.in_flight.pop(attempt.request_id, None)
            if verdict != "retry" or time.monotonic() + wait > give_up:
                break
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 2.0)
        self.answered += 1
        self._progress.set()

    # --- figures -------------------------------------------------------------------------

    def accepted(self) -> set[str]:
        return {r.email for r in self.registrations if r.accepted}

    def outcomes(self) -> Counter[str]:
        """Every attempt's outcome: a status code or a transport error's class name."""
        return Counter(a.outcome for r in self.registrations for a in r.attempts)

    def figures(self) -> dict[str, object]:
        outcomes = self.outcomes()
        statuses = {k: v for k, v in outcomes.items() if k.isdigit()}
        finals = Counter(str(r.status) for r in self.registrations)
        return {
            "registrations": len(self.registrations),
            "accepted": sum(r.accepted for r in self.registrations),
            "final_answers": dict(sorted(finals.items())),
            "attempts": sum(outcomes.values()),
            "retries": sum(len(r.attempts) - 1 for r in self.registrations),
            "answers_503": statuses.get("503", 0),
            "answers_5xx_other": sum(
                v for k, v in statuses.items() if int(k) >= 500 and k != "503"
            ),
            "transport_errors": sum(v for k, v in outcomes.items() if not k.isdigit()),
            "attempt_outcomes": dict(sorted(outcomes.items())),
            "stream_seconds": round(self.finished_at - self.started_at, 1),
        }
