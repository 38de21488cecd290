"""Pure ASGI middleware, cheap enough for the hot path: request ids, metrics, access log, the
request body read whole within its limits, and the admission gate in front of the database pool."""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import context, metrics
from app.core.errors import AppError, BodyTimeout, BodyTooLarge, ServiceBusy

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
    """Counts and times every request by its route template, and writes the access log line.

    Label values come from fixed sets only (the app's route templates, a few methods), so no
    request, whatever its path or method, can add a series.
    """

    def __init__(
        self, app: ASGIApp, *, routes: Sequence[BaseRoute] = (), access_log: bool = True
    ) -> None:
        self.app = app
        self.access_log = access_log
        self._routes = routes  # the app's own list: complete by the first request
        self._templates: dict[int, str] | None = None

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
            method = scope["method"] if scope["method"] in METHODS else metrics.OTHER_METHOD
            metrics.observe_request(method, self._label(scope), status, seconds)
            if self.access_log:
                access_logger.info(
                    "%s %s %d %.1fms", scope["method"], scope["path"], status, seconds * 1000
                )

    def _label(self, scope: Scope) -> str:
        if self._templates is None:
            self._templates = route_templates(self._routes)
        return self._templates.get(id(scope.get("route")), metrics.UNMATCHED)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_templates(routes: Sequence[BaseRoute], prefix: str = "") -> dict[int, str]:
    """Every route a router can put in scope["route"], by identity, with its full template.

    Read from the route objects' own path_format (FastAPI keeps included routes with their
    paths relative to the router, and mounted apps' routes are relative to the mount), so a
    label is one of these templates whatever path was asked for.
    """
    found: dict[int, str] = {}
    for candidate in iter_route_contexts(routes):
        route = candidate.original_route
        if candidate.path_format is not None:
            found.setdefault(id(route), prefix + candidate.path_format)
        if isinstance(route, Mount):
            found.update(route_templates(route.routes, prefix + route.path))
    return found


class RequestBodyMiddleware:
    """Reads a request's whole body before the app sees it, within a size cap and a deadline.

    It runs outside the admission gate: a client that uploads slowly waits here, holding no
    slot and no connection, and is admitted once its body is in memory, so a slot is held only
    while the service works. A body larger than `max_bytes` (declared, or streamed in chunks)
    gets a 413 at once, one not complete within `timeout` seconds of its headers a 408; both
    close the connection, so the rest is never read. A request without a body (no
    Content-Length, no Transfer-Encoding: every GET) passes straight through.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _declared_length(scope) if scope["type"] == "http" else None
        if not length:  # no body, or an empty one
            await self.app(scope, receive, send)
            return
        try:
            if length > self.max_bytes:
                raise BodyTooLarge()
            body = await self._read(receive)
        except AppError as refusal:  # too large or too slow
            answer = JSONResponse(
                {"detail": refusal.message}, refusal.status_code, headers=refusal.response_headers
            )
            await answer(scope, receive, send)
            return
        if body is None:
            return  # the client left before its body was complete: nobody to answer
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: the server's own disconnect message
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BodyTooLarge()
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyTimeout() from None


def _declared_length(scope: Scope) -> int | None:
    """The declared body size; None without a body, -1 when only the end will tell (chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server has checked it; should a malformed one get here, it is read to its end.
            return int(value) if value.isdigit() else -1
        if name == b"transfer-encoding":
            return -1
    return None


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
        metrics.ADMISSION_LIMIT.set(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        if not await self._admit():
            busy = ServiceBusy()
            refusal = JSONResponse({"detail": busy.message}, 503, headers=busy.response_headers)
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()
            metrics.ADMISSION_IN_FLIGHT.dec()

    async def _admit(self) -> bool:
        """Waits for a slot, counted as waiting meanwhile; False when none came in time."""
        metrics.ADMISSION_WAITING.inc()
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            metrics.ADMISSION_REJECTED.inc()
            return False
        finally:
            metrics.ADMISSION_WAITING.dec()
        metrics.ADMISSION_IN_FLIGHT.inc()
        return True
