"""Request ids: taken from X-Request-ID or generated, returned, and kept for logs and jobs."""

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import context

HEADER = b"x-request-id"
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:-]{1,100}$")


class RequestIdMiddleware:
    """Pure ASGI, so it costs next to nothing on the hot path."""

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
