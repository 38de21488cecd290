import asyncio
import dataclasses
import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.main import create_app
from app.services.mailer import Mail, Mailer, as_bytes
from tests.conftest import PASSWORD, SmtpSink, empty_tables, make_settings
from tests.jobs import wait_for_job
from tests.mail import text_body

MAIL = Mail(
    to="reader@example.com",
    subject="Hello",
    text="plain words",
    html="<p>rich words</p>",
    message_id="0d6f6c1e-3c1b-4c55-9d43-6a0d8c1f1a11",
    request_id="req-42",
)


@pytest.fixture
def file_settings(settings: Settings) -> Settings:
    """No SMTP_HOST: mails become files, as on a laptop."""
    return settings.model_copy(update={"smtp_host": ""})


async def test_without_smtp_host_a_mail_is_written_as_an_eml_file(
    file_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.services.mailer"):
        await Mailer(file_settings).send(MAIL)
    [path] = list(Path(file_settings.mail_dir).glob("*.eml"))
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == "reader@example.com"
    assert message["Message-ID"] == f"<{MAIL.message_id}@localhost>"
    assert message["X-Request-ID"] == "req-42"
    assert str(path) in caplog.text


async def test_a_resent_mail_overwrites_its_file_instead_of_duplicating_it(
    file_settings: Settings,
) -> None:
    mailer = Mailer(file_settings)
    await mailer.send(MAIL)
    await mailer.send(MAIL)
    assert len(list(Path(file_settings.mail_dir).glob("*"))) == 1


async def test_message_id_uses_the_domain_of_mail_from(settings: Settings) -> None:
    mailer = Mailer(settings.model_copy(update={"mail_from": "Team <hello@accounts.example>"}))
    message = mailer.build(MAIL)
    assert message["Message-ID"] == f"<{MAIL.message_id}@accounts.example>"
    assert message["From"] == "Team <hello@accounts.example>"


async def test_smtp_tls_refuses_a_server_without_starttls(
    settings: Settings, smtp: SmtpSink
) -> None:
    """With SMTP_TLS on, mail is never sent in the clear to a server that cannot encrypt."""
    tls = settings.model_copy(update={"smtp_tls": True})
    with pytest.raises(aiosmtplib.SMTPException):
        await Mailer(tls).send(MAIL)
    assert smtp.messages == []


async def test_registration_on_a_laptop_writes_the_welcome_email_to_a_file(
    file_settings: Settings,
) -> None:
    app: FastAPI = await asyncio.to_thread(create_app, file_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post(
                "/api/v1/auth/register",
                json={"email": "laptop@example.com", "name": "L", "password": PASSWORD},
            )
        assert response.status_code == 201
        async with app.state.db.transaction() as session:
            job = await session.scalar(select(Job))
        assert job is not None
        await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
        await app.state.jobs.stop()
        await empty_tables(app)
    [path] = list(Path(file_settings.mail_dir).glob("*.eml"))
    assert path.name == f"{job.id}.eml"
    assert "verify-email?token=" in path.read_text()


async def test_job_log_lines_carry_the_request_id(
    client: httpx.AsyncClient, app: FastAPI, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.services.job_runner"):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "logs@example.com", "name": "L", "password": PASSWORD},
            headers={"X-Request-ID": "trace-me-7"},
        )
        assert response.status_code == 201
        await smtp.wait_for(1)
        async with asyncio.timeout(5):
            while "succeeded" not in caplog.text:
                await asyncio.sleep(0.02)
    [line] = [r.getMessage() for r in caplog.records if "succeeded" in r.getMessage()]
    assert "send_welcome_email" in line
    assert "[request trace-me-7]" in line


class PeerSink:
    """An SMTP server that notes which connection each message came on, and can refuse one or
    hang up on the client after a message, as a server does with idle connections."""

    def __init__(self) -> None:
        self.peers: list[object] = []
        self.refuse_next = False
        self.hang_up_after_each = False

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        if self.refuse_next:
            self.refuse_next = False
            return "451 4.3.0 Try again later"
        self.peers.append(session.peer)  # type: ignore[attr-defined]
        if self.hang_up_after_each:
            transport = server.transport  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(0.05, transport.close)
        return "250 OK"


@pytest.fixture
def peer_sink() -> Iterator[tuple[PeerSink, int]]:
    sink = PeerSink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def _mailer(port: int) -> Mailer:
    return Mailer(
        make_settings(
            "sqlite+aiosqlite:///unused.db", smtp_host="127.0.0.1", smtp_port=port, smtp_tls=False
        )
    )


async def test_mails_share_one_connection(peer_sink: tuple[PeerSink, int]) -> None:
    sink, port = peer_sink
    mailer = _mailer(port)
    for _ in range(3):
        await mailer.send(MAIL)
    await mailer.close()
    assert len(sink.peers) == 3
    assert len(set(sink.peers)) == 1


async def test_a_connection_the_server_closed_is_replaced_unnoticed(
    peer_sink: tuple[PeerSink, int],
) -> None:
    sink, port = peer_sink
    sink.hang_up_after_each = True
    mailer = _mailer(port)
    for _ in range(3):
        await mailer.send(MAIL)
        await asyncio.sleep(0.1)  # the server hangs up meanwhile
    await mailer.close()
    assert len(set(sink.peers)) == 3


async def test_a_connection_that_failed_is_not_used_again(peer_sink: tuple[PeerSink, int]) -> None:
    sink, port = peer_sink
    mailer = _mailer(port)
    await mailer.send(MAIL)
    sink.refuse_next = True
    with pytest.raises(aiosmtplib.SMTPResponseException):
        await mailer.send(MAIL)
    await mailer.send(MAIL)
    await mailer.close()
    assert len(sink.peers) == 2
    assert sink.peers[0] != sink.peers[1]


async def test_non_ascii_names_and_text_arrive_intact(settings: Settings, smtp: SmtpSink) -> None:
    sender = settings.model_copy(update={"mail_from": "Kontenprüfung <no-reply@example.com>"})
    mail = Mail(
        to="reader@example.com",
        subject="Willkommen, Jürgen",
        text="Grüße, Jürgen: https://example.com/verify-email?token=abc.def",
        html="<p>Grüße, Jürgen</p>",
        message_id="7f1d6e2a-0000-4000-8000-000000000001",
    )
    await Mailer(sender).send(mail)
    (message,) = await smtp.wait_for(1)
    assert message["Subject"] == "Willkommen, Jürgen"
    assert message["From"] == "Kontenprüfung <no-reply@example.com>"
    assert text_body(message).rstrip("\n") == mail.text  # set_content ends a body with a line end
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert html.get_content().rstrip("\r\n") == mail.html


@pytest.mark.parametrize(
    "mail",
    [
        MAIL,
        Mail(
            to="jürgen@example.com",
            subject="Willkommen, Jürgen, und danke für die Anmeldung bei unserem Dienst heute",
            text="Grüße\n.\nA line that starts with a dot, and one that is long enough to be "
            "folded by quoted-printable encoding, which wraps at seventy-six characters",
            html="<p>Grüße</p>",
            message_id="7f1d6e2a-0000-4000-8000-000000000002",
        ),
        Mail(
            to="reader@example.com",
            subject="A subject in plain ASCII that is far too long to fit on the one line a "
            "header gets before folding",
            text="plain",
            html="<p>plain</p>",
            message_id="7f1d6e2a-0000-4000-8000-000000000003",
        ),
    ],
    ids=["ascii", "non-ascii", "long-subject"],
)
def test_messages_read_back_as_written(settings: Settings, mail: Mail) -> None:
    """policy.SMTP: CRLF line ends, long and non-ASCII headers folded and encoded."""
    sender = settings.model_copy(update={"mail_from": "Kontenprüfung <no-reply@example.com>"})
    raw = as_bytes(Mailer(sender).build(mail))
    assert raw.isascii()  # no 8BITMIME needed
    lines = raw.split(b"\r\n")
    assert b"\n" not in b"".join(lines)
    assert max(len(line) for line in lines) <= 78
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == mail.subject
    assert message["To"] == mail.to
    assert message["From"] == "Kontenprüfung <no-reply@example.com>"
    assert text_body(message).rstrip("\n") == mail.text


async def test_mail_log_lines_name_the_job_and_user_never_the_address(
    file_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    mail = dataclasses.replace(MAIL, user_id="4b1f0c39-0000-4000-8000-00000000000a")
    with caplog.at_level(logging.INFO, logger="app.services.mailer"):
        await Mailer(file_settings).send(mail)
    assert MAIL.message_id in caplog.text
    assert "4b1f0c39-0000-4000-8000-00000000000a" in caplog.text
    assert MAIL.to not in caplog.text


@pytest.mark.parametrize(
    ("step", "reply", "error", "masked"),
    [
        (
            "rcpt",
            "550 5.1.1 <{address}>: Recipient address rejected: User unknown",
            aiosmtplib.SMTPRecipientRefused,
            "5.1.1 <[address]>: Recipient address rejected: User unknown",
        ),
        (
            "rcpt",
            "450 4.2.1 {address}: Mailbox busy",
            aiosmtplib.SMTPRecipientRefused,
            "4.2.1 [address]: Mailbox busy",
        ),
        (
            "data",
            "554 5.7.1 Message from <no-reply@example.com> to <reader@example.com> refused",
            aiosmtplib.SMTPDataError,
            "5.7.1 Message from <[address]> to <[address]> refused",
        ),
    ],
    ids=["rcpt-550", "rcpt-450", "data-554"],
)
async def test_a_refusal_leaves_the_mailer_with_its_code_and_reply_but_no_address(
    settings: Settings,
    smtp: SmtpSink,
    step: str,
    reply: str,
    error: type[aiosmtplib.SMTPResponseException],
    masked: str,
) -> None:
    if step == "rcpt":
        smtp.refuse_recipient_with = reply
    else:
        smtp.refuse_with = reply
    with pytest.raises(error) as raised:
        await Mailer(settings).send(MAIL)
    refused = raised.value
    assert (refused.code, refused.message) == (int(reply[:3]), masked)
    assert "reader" not in f"{refused!r} {refused} {refused.args}"
    assert refused.__context__ is None  # nor chained to aiosmtplib's own error, address and all


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 <{address}>: Recipient address rejected: User unknown",
        "450 4.2.1 <{address}>: Recipient address rejected: Mailbox busy",
    ],
    ids=["permanent", "transient"],
)
async def test_a_refused_recipient_is_named_neither_in_the_jobs_error_nor_in_the_logs(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: SmtpSink,
    caplog: pytest.LogCaptureFixture,
    reply: str,
) -> None:
    smtp.refuse_recipient_with = reply
    with caplog.at_level(logging.INFO, logger="app"):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "refused.reader@example.com", "name": "R", "password": PASSWORD},
        )
        assert response.status_code == 201
        async with asyncio.timeout(10):  # two attempts: the first retry shows it is one
            while len(_failures(caplog)) < 2:
                await asyncio.sleep(0.02)
    async with app.state.db.transaction() as session:
        job = await session.scalar(select(Job))
    assert job is not None
    # Tried again like any SMTP error: the mail jobs declare none permanent.
    assert job.status is not JobStatus.DEAD
    assert job.last_error is not None
    assert job.last_error.startswith(f"SMTPRecipientRefused: ({reply[:3]}, '")
    assert "<[address]>: Recipient address rejected" in job.last_error
    assert all("Recipient address rejected" in line for line in _failures(caplog))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("app")]
    assert [line for line in [job.last_error, *lines] if "refused.reader" in line] == []


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.services.job_runner"
        and "send_welcome_email" in r.getMessage()
        and " failed" in r.getMessage()
    ]
