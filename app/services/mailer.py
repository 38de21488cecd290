"""Outgoing mail: SMTP through aiosmtplib, or .eml files under DATA_DIR/mail in development."""

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
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

    def build(self, mail: Mail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = f"<{mail.message_id}@{self.domain()}>"
        if mail.request_id:
            message["X-Request-ID"] = mail.request_id
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
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

    async def _deliver(self, message: EmailMessage) -> None:
        while self._idle:
            smtp = self._idle.pop()
            if not smtp.is_connected:
                continue
            try:
                await smtp.send_message(message)
            except _STALE:
                smtp.close()
                break  # the server hung up on an idle connection: a new one below
            except BaseException:
                smtp.close()
                raise
            self._put_back(smtp)
            return
        smtp = await self._connect()
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

    def _write_file(self, message: EmailMessage, message_id: str) -> Path:
        directory = self.settings.mail_dir
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{message_id}.eml"
        draft = path.with_suffix(".tmp")
        draft.write_bytes(message.as_bytes())
        draft.replace(path)  # whole files only, even if the process dies mid-write
        return path
