"""The connection protocol `serve` gives uvicorn: its own, with the request head bounded.

uvicorn (0.54, httptools) bounds only the idle time between two requests (timeout_keep_alive,
5 s), and only once a first response has gone out: a new connection that sends nothing stays
open, and every byte received restarts the idle clock, so a client that sends its headers a
byte every few seconds (slowloris) holds its connection for ever. The parser also takes
headers of any size. This protocol adds, per connection:

- the idle deadline from the start, not only after the first response;
- a deadline for the request line and headers, REQUEST_BODY_TIMEOUT_SECONDS from their first
  byte: past it, 408 and the connection closed;
- a cap on their size, MAX_HEAD_BYTES: past it, 431 and the connection closed.

The body has its own deadline and cap, in app.middleware.RequestBodyMiddleware.
"""

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.core.config import load_settings

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; browsers and proxies send a few KiB


@functools.cache
def head_timeout() -> float:
    """Read once per process: uvicorn's worker processes import this module by name."""
    return load_settings().request_body_timeout_seconds


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.in_head = False
        self.head_bytes = 0

    # As in uvicorn's own protocol: asyncio.Protocol declares the wider BaseTransport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted by the chunk, after parsing it: a head that ends inside a chunk passes, and
        # one still unfinished is charged the whole chunk.
        if not self.in_head:
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            logger.warning("request head over %d bytes from %s", MAX_HEAD_BYTES, self.client)
            self._refuse(431, b"Request headers too large")

    # Parser callbacks: a request's head starts at its first byte and ends with its headers.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = 0
        self.head_deadline = self.loop.call_later(head_timeout(), self._head_too_slow)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm_head_deadline()
        super().on_headers_complete()

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        logger.info("request head not complete in %gs from %s: closed", head_timeout(), self.client)
        self._refuse(408, b"Request headers not complete in time")

    def _refuse(self, status: int, message: bytes) -> None:
        """Answer and close; while an earlier request's response is being sent, just close."""
        self._disarm_head_deadline()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: text/plain; charset=utf-8\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(message))
            self.transport.write(b"".join(head) + message)
        self.transport.close()

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
