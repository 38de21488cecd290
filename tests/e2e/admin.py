"""Driving the admin UI in tests: logging in, rows made directly in the database."""

import httpx
from fastapi import FastAPI

from app.db.models import Job, JobStatus, User
from app.services import tasks
from tests.conftest import PASSWORD


async def admin_login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post("/admin/login", data={"username": email, "password": password})


async def make_job(app: FastAPI, *, user: User, status: JobStatus) -> Job:
    """A welcome email job for `user`, put straight into `status`, its attempts used up."""
    async with app.state.db.transaction() as session:
        job = Job(
            name=tasks.send_welcome_email.name,
            payload={"user_id": str(user.id)},
            status=status,
            attempts=3,
            max_attempts=3,
            last_error="SMTPRecipientsRefused: 550 mailbox unavailable",
        )
        session.add(job)
    return job
