"""A real SMTP server (aiosmtpd) that accepts every mail and records when it arrived.

Run: python -m bench.smtp_sink PORT FILE. Each accepted message appends a JSON line
{"at": unix time when DATA ended, "message_id": "<job id@domain>"} to FILE.
"""

import asyncio
import json
import signal
import sys
import time
from email.parser import BytesHeaderParser
from typing import IO

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Recorder:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.parser = BytesHeaderParser()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.time()  # the message is complete; "250" follows at once
        content = envelope.original_content or b""
        message_id = self.parser.parsebytes(content).get("Message-ID", "")
        self.out.write(json.dumps({"at": at, "message_id": message_id}) + "\n")
        self.out.flush()
        return "250 Message accepted for delivery"


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "a", encoding="utf-8") as out:
        controller = Controller(Recorder(out), hostname="127.0.0.1", port=port)
        controller.start()
        stop = asyncio.Event()

        async def wait() -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            await stop.wait()

        try:
            asyncio.run(wait())
        finally:
            controller.stop()


if __name__ == "__main__":
    main()
