"""Pure ASGI middleware, cheap enough for the hot path: request ids, metrics, access log, and
the admission gate in front of the database pool."""

import asyncio
import logging
import re
import time
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import context, metrics
from app.core.errors import ServiceBusy

access_logger = logging.getLogger("app.access")

HEADER = b"x-request-id"
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:-]{1,100}$")


class RequestIdMiddleware:
    """Takes X-Request-ID (or makes one), returns it, and keeps it for logs and jobs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), b"")
        request_id = given if _ACCEPTABLE.match(given) else uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id)]
            await send(message)

        token = context.request_id.set(request_id.decode())
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.request_id.reset(token)


class RequestMetricsMiddleware:
    """Counts and times every request by its route template, and writes the access log line."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts, the request failed

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_request(scope["method"], route_template(scope), status, seconds)
            if self.access_log:
                access_logger.info(
                    "%s %s %d %.1fms", scope["method"], scope["path"], status, seconds * 1000
                )


def route_template(scope: Scope) -> str:
    """The matched route as a template ("/api/v1/users/{user_id}"): bounded label values.

    Rebuilt from the path and its parameters, since included routers keep relative paths.
    """
    if "route" not in scope:
        return metrics.UNMATCHED
    path: str = scope["path"]
    for name, value in scope.get("path_params", {}).items():
        head, found, tail = path.rpartition(str(value))
        if found:
            path = f"{head}{{{name}}}{tail}"
    return path


class AdmissionMiddleware:
    """Admits at most `limit` requests at a time, first come first served.

    Sized to the connection pool, so an admitted request never waits for a connection. Without
    it, a burst larger than the pool waits inside the pool, whose queue hands a freed
    connection to whoever asks next rather than to whoever waited longest: under sustained
    overload some requests starve until DB_POOL_TIMEOUT while others pass. This queue is fair,
    so waits stay short and alike; a request not admitted within `timeout` gets a 503.
    Health checks and metrics bypass it, so probes still answer when the service is busy.
    """

    def __init__(
        self, app: ASGIApp, *, limit: int, timeout: float, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.exempt = exempt
        self._slots = asyncio.Semaphore(limit)  # FIFO: a newcomer never overtakes a waiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            busy = ServiceBusy()
            refusal = JSONResponse({"detail": busy.message}, 503, headers=busy.response_headers)
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()
