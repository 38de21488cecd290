"""The SMTP server the service delivers to: aiosmtpd in a thread of the test process.

It records every accepted transmission (recipient, Message-ID), can answer 451 for a while,
and can take its time over each message as a real relay does.
"""

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from reliability.processes import free_port

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
TEMPORARY_FAILURE = "451 4.3.0 Temporary local problem, try again later"


@dataclass(frozen=True)
class Delivery:
    recipient: str
    message_id: str
    at: float  # time.monotonic()


class SmtpSink:
    """An aiosmtpd handler; the counters are read from the test's thread."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.refused = 0
        self.busy = 0  # messages being received right now
        self.delay_s = 0.0
        self._refuse_until = 0.0
        self._lock = threading.Lock()

    def refuse_for(self, seconds: float) -> None:
        """Answer every message with 451 for the next `seconds`."""
        self._refuse_until = time.monotonic() + seconds

    def refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refusing():
            with self._lock:
                self.refused += 1
            return TEMPORARY_FAILURE
        if self.delay_s:
            self.busy += 1
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.busy -= 1
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        match = MESSAGE_ID.search(content.split(b"\r\n\r\n", 1)[0])
        message_id = match.group(1).decode() if match else "<missing>"
        now = time.monotonic()
        with self._lock:
            self.deliveries.extend(
                Delivery(recipient.lower(), message_id, now) for recipient in envelope.rcpt_tos
            )
        return "250 2.0.0 Message accepted for delivery"

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def recipients(self) -> Counter[str]:
        """Distinct Message-IDs per recipient: resends of one Message-ID count once."""
        return Counter(
            recipient for recipient, _ in {(d.recipient, d.message_id) for d in self.snapshot()}
        )


@contextmanager
def smtp_server(sink: SmtpSink) -> Iterator[int]:
    """Serve `sink` on a free port of 127.0.0.1; yields the port."""
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=30)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
