import asyncio
import email
import email.policy
import logging
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.main import create_app
from app.services.mailer import Mail, Mailer
from tests.conftest import PASSWORD, SmtpSink, empty_tables
from tests.jobs import wait_for_job

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
        async with app.state.db.read_sessionmaker() as session:
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
