"""Outgoing mail: SMTP through aiosmtplib, or .eml files under DATA_DIR/mail in development."""

import asyncio
import logging
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from pathlib import Path

import aiosmtplib

from app.core import spans
from app.core.config import Settings
from app.core.redaction import MASKED_ADDRESS, mask_addresses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str
    # Derived from the job id: a retried job sends the same Message-ID, so a duplicate
    # delivery can be recognised downstream. Log lines name it, and the user, never the address.
    message_id: str
    request_id: str | None = None
    user_id: str | None = None


def as_bytes(message: EmailMessage) -> bytes:
    """The message as it goes on the wire: CRLF line ends, headers folded by policy.SMTP."""
    return message.as_bytes(policy=SMTP)


def _cte(body: str) -> str | None:
    # Non-ASCII bodies go quoted-printable: readable, and safe for servers without 8BITMIME.
    return None if body.isascii() else "quoted-printable"


# Reasons to retry a message once on a new connection: the reused one was closed while idle.
_STALE = (aiosmtplib.SMTPServerDisconnected, ConnectionError)
# A server's refusals: aiosmtplib's carry the recipient, and the reply often quotes it.
_REFUSALS = (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused)


def _masked(
    exc: aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused,
) -> aiosmtplib.SMTPResponseException:
    """The same refusal with no address in it: a job's error is logged and kept in
    jobs.last_error, which the admin, the jobs API and the CLI show. Its type and reply code
    stay, for the delivery span and for a retry policy that tells a transient 4xx from a
    permanent 5xx (the mail jobs retry both today)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        exc = exc.recipients[0]  # one recipient per message: "all refused" is that one
    reply = mask_addresses(exc.message)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return aiosmtplib.SMTPRecipientRefused(exc.code, reply, MASKED_ADDRESS)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return aiosmtplib.SMTPSenderRefused(exc.code, reply, MASKED_ADDRESS)
    return type(exc)(exc.code, reply)


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
        self._from = Address(display_name=name, addr_spec=self.sender)

    def domain(self) -> str:
        return self.sender.rpartition("@")[2] or "localhost"

    def build(self, mail: Mail) -> EmailMessage:
        """A text and an HTML alternative; headers encoded (RFC 2047) where they must be."""
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = f"<{mail.message_id}@{self.domain()}>"
        if mail.request_id:
            message["X-Request-ID"] = mail.request_id
        message.set_content(mail.text, cte=_cte(mail.text))
        message.add_alternative(mail.html, subtype="html", cte=_cte(mail.html))
        return message

    async def send(self, mail: Mail) -> None:
        message = self.build(mail)
        label = f"mail {mail.message_id} for user {mail.user_id or '-'}"
        if not self.settings.smtp_host:
            path = await asyncio.to_thread(self._write_file, message, mail.message_id)
            logger.info("%s written to %s", label, path)
            return
        with spans.smtp_delivery(self.settings.smtp_host, self.settings.smtp_port):
            await self._deliver(mail.to, as_bytes(message))
        logger.info("%s accepted by %s", label, self.settings.smtp_host)

    async def _deliver(self, to: str, message: bytes) -> None:
        """Hand the message over; a refusal leaves as the same error with no address in it."""
        try:
            await self._hand_over(to, message)
            return
        except _REFUSALS as exc:
            refused = _masked(exc)
        raise refused  # out of the except block: the original is not chained to it

    async def _hand_over(self, to: str, message: bytes) -> None:
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

    def _write_file(self, message: EmailMessage, message_id: str) -> Path:
        directory = self.settings.mail_dir
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{message_id}.eml"
        draft = path.with_suffix(".tmp")
        draft.write_bytes(as_bytes(message))
        draft.replace(path)  # whole files only, even if the process dies mid-write
        return path
