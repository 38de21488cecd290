"""Outgoing mail: SMTP through aiosmtplib, or .eml files under DATA_DIR/mail in development."""

import asyncio
import logging
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
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

    def domain(self) -> str:
        address = parseaddr(self.settings.mail_from)[1]
        return address.rpartition("@")[2] or "localhost"

    def build(self, mail: Mail) -> Message:
        """The message, with the MIME classes of the compat32 policy: EmailMessage parses every
        header through its registry, which cost three times as much CPU as sending the mail."""
        parts = [_part(mail.text), _part(mail.html, "html")]
        message = MIMEMultipart("alternative", _subparts=parts)
        message["From"] = formataddr(parseaddr(self.settings.mail_from), "utf-8")
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
        await self._deliver(message)
        logger.info(
            "mail to %s (%s) accepted by %s", mail.to, mail.subject, self.settings.smtp_host
        )

    async def _deliver(self, message: Message) -> None:
        while self._idle:
            smtp = self._idle.pop()
            if not smtp.is_connected:
                continue
            try:
                await self._send_on(smtp, message)
                return
            except _STALE:
                break  # the server hung up on an idle connection: a new one below
        await self._send_on(await self._connect(), message)

    async def _send_on(self, smtp: aiosmtplib.SMTP, message: Message) -> None:
        """Send, then keep the connection for the next message; close it if anything failed."""
        try:
            await smtp.send_message(message)
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
        draft.write_bytes(message.as_bytes())
        draft.replace(path)  # whole files only, even if the process dies mid-write
        return path
