"""Outgoing mail: SMTP through aiosmtplib, or .eml files under DATA_DIR/mail in development."""

import asyncio
import io
import logging
import uuid
from dataclasses import dataclass
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import Compat32
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path

import aiosmtplib

from app.core.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str
    # Derived from the job id: a retried job sends the same Message-ID, so a duplicate
    # delivery can be recognised downstream.
    message_id: str
    request_id: str | None = None


# Non-ASCII bodies go quoted-printable: readable, and safe for servers without 8BITMIME.
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def _part(body: str, subtype: str = "plain") -> MIMEText:
    return MIMEText(body, subtype, "us-ascii" if body.isascii() else _UTF8)  # type: ignore[arg-type]


def _header(text: str) -> str:
    return text if text.isascii() else Header(text, "utf-8").encode()  # RFC 2047 when it must


class _Policy(Compat32):
    """compat32, with the folding of a header that needs none skipped.

    compat32 folds every header through email.header.Header: the most expensive step of
    sending a mail. A one-line ASCII value that fits on its line folds to itself."""

    def fold_binary(self, name: str, value: str) -> bytes:
        line = f"{name}: {value}"
        one_line = isinstance(value, str) and "\n" not in value and "\r" not in value
        if one_line and line.isascii() and len(line) <= (self.max_line_length or 0):
            return f"{line}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _Policy()


def as_bytes(message: Message) -> bytes:
    """The message as it goes on the wire (aiosmtplib turns its line ends into CRLF)."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
    return out.getvalue()


# Reasons to retry a message once on a new connection: the reused one was closed while idle.
_STALE = (aiosmtplib.SMTPServerDisconnected, ConnectionError)


class Mailer:
    """Sends over connections kept open between messages.

    Opening one costs a TCP handshake, EHLO (STARTTLS and AUTH where configured) and QUIT:
    more CPU, on both ends, than the message itself. A connection that fails in any way is
    closed, never reused; one the server closed while it was idle is replaced unnoticed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keep_open = settings.job_concurrency  # as many as jobs may send at once
        self._idle: list[aiosmtplib.SMTP] = []
        name, self.sender = parseaddr(settings.mail_from)
        self._from_header = formataddr((name, self.sender), "utf-8")

    def domain(self) -> str:
        return self.sender.rpartition("@")[2] or "localhost"

    def build(self, mail: Mail) -> Message:
        """The message, with the MIME classes of the compat32 policy: EmailMessage parses every
        header through its registry, which cost three times as much CPU as sending the mail."""
        parts = [_part(mail.text), _part(mail.html, "html")]
        # A random boundary of our own: left to the generator, it compiles a regular
        # expression per message to check the boundary against the text. "=_" cannot occur
        # in quoted-printable text, and 128 random bits will not occur in plain ASCII.
        message = MIMEMultipart("alternative", boundary=f"=_{uuid.uuid4().hex}", _subparts=parts)
        message["From"] = self._from_header
        message["To"] = mail.to
        message["Subject"] = _header(mail.subject)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = f"<{mail.message_id}@{self.domain()}>"
        if mail.request_id:
            message["X-Request-ID"] = mail.request_id
        return message

    async def send(self, mail: Mail) -> None:
        message = self.build(mail)
        if not self.settings.smtp_host:
            path = await asyncio.to_thread(self._write_file, message, mail.message_id)
            logger.info("mail to %s (%s) written to %s", mail.to, mail.subject, path)
            return
        await self._deliver(mail.to, as_bytes(message))
        logger.info(
            "mail to %s (%s) accepted by %s", mail.to, mail.subject, self.settings.smtp_host
        )

    async def _deliver(self, to: str, message: bytes) -> None:
        while self._idle:
            smtp = self._idle.pop()
            if not smtp.is_connected:
                continue
            try:
                await self._send_on(smtp, to, message)
                return
            except _STALE:
                break  # the server hung up on an idle connection: a new one below
        await self._send_on(await self._connect(), to, message)

    async def _send_on(self, smtp: aiosmtplib.SMTP, to: str, message: bytes) -> None:
        """Send, then keep the connection for the next message; close it if anything failed."""
        try:
            await smtp.sendmail(self.sender, [to], message)
        except BaseException:
            smtp.close()
            raise
        self._put_back(smtp)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        implicit_tls = s.smtp_port == 465
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_user or None,
            password=s.smtp_password or None,
            use_tls=s.smtp_tls and implicit_tls,
            start_tls=s.smtp_tls and not implicit_tls,
            timeout=s.smtp_timeout_seconds,
        )
        await smtp.connect()  # with STARTTLS and AUTH as configured
        return smtp

    def _put_back(self, smtp: aiosmtplib.SMTP) -> None:
        if len(self._idle) < self.keep_open:
            self._idle.append(smtp)
        else:
            smtp.close()

    async def close(self) -> None:
        """Say goodbye on the connections kept open."""
        idle, self._idle = self._idle, []
        for smtp in idle:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()

    def _write_file(self, message: Message, message_id: str) -> Path:
        directory = self.settings.mail_dir
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{message_id}.eml"
        draft = path.with_suffix(".tmp")
        draft.write_bytes(as_bytes(message))
        draft.replace(path)  # whole files only, even if the process dies mid-write
        return path
