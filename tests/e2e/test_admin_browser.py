"""The admin in a real headless Chromium against a real server: log in, find, retry.

Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it): skipped without it
locally, failed without it in CI. Runs on PostgreSQL only; the HTTP tests cover both backends.
"""

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, Page, async_playwright, expect

from app.core.config import Settings
from app.db.models import JobStatus
from tests.conftest import IN_CI, PASSWORD, MakeUser
from tests.e2e.admin import make_job
from tests.jobs import wait_for_job

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]
SERVER_START_S = 30.0

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if IN_CI:
            pytest.fail(f"CI needs Chromium for the browser tests; {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    page = await browser.new_page(viewport={"width": 1920, "height": 1000})
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        await page.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def server(settings: Settings, app: FastAPI, tmp_path: Path) -> AsyncIterator[str]:
    """`python -m app serve` on the test database, as an operator would run it; its base URL.

    Depends on `app` so that the tables are emptied after the server has stopped.
    """
    await app.state.jobs.stop()  # the server under test runs the jobs, not this process
    port = _free_port()
    env = os.environ | {
        "DATABASE_URL": settings.database_url,
        "DB_TRANSACTION_POOLER": str(settings.db_transaction_pooler).lower(),
        "DATABASE_LISTEN_URL": settings.database_listen_url,
        "SECRET_KEY": settings.signing_key,
        "ENVIRONMENT": "test",
        "DATA_DIR": str(tmp_path / "server-data"),
        "SMTP_HOST": "",  # mails become files under DATA_DIR
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "WARNING",
        "JOB_SHUTDOWN_GRACE_SECONDS": "2",
    }
    log = (tmp_path / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
        cwd=ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _wait_until_live(process, base_url, tmp_path / "server.log")
        yield base_url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _wait_until_live(process: asyncio.subprocess.Process, base_url: str, log: Path) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=1) as client:
        for _ in range(int(SERVER_START_S / 0.1)):
            if process.returncode is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if (await client.get("/health/live")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"the server did not answer within {SERVER_START_S} s:\n{log.read_text()}")


async def test_admin_logs_in_finds_a_user_and_retries_a_dead_job(
    page: Page, server: str, app: FastAPI, make_user: MakeUser
) -> None:
    admin = await make_user(email="root@example.com", is_superuser=True, is_verified=True)
    alice = await make_user(email="alice@example.com", name="Alice Liddell")
    await make_user(email="bob@example.com", name="Bob")
    dead = await make_job(app, user=alice, status=JobStatus.DEAD)

    await page.goto(f"{server}/admin/")
    await expect(page).to_have_url(f"{server}/admin/login")
    await page.fill("input[name=username]", admin.email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{server}/admin/")

    await page.goto(f"{server}/admin/user/list")
    await page.fill("#search-input", "alice@")
    await page.click("#search-button")
    await expect(page).to_have_url(f"{server}/admin/user/list?search=alice%40")
    rows = page.locator("table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("alice@example.com")
    await expect(rows.first).to_contain_text("Alice Liddell")

    await page.goto(f"{server}/admin/job/list?status=dead")
    await _select_row(page, str(dead.id))
    await page.click("#dropdownMenuButton")  # "Actions"
    await page.click("#action-custom-retry")
    await expect(page).to_have_url(f"{server}/admin/job/list")
    toast = page.locator(".toast", has_text="Queued 1 job to run again.")
    await expect(toast).to_have_class(re.compile(r"\bshow\b"))
    await expect(toast).not_to_have_class(re.compile(r"\bshowing\b"))  # faded in
    status = page.locator("table tbody tr", has_text=str(dead.id)).locator("td").nth(4)
    await expect(status).to_have_text(re.compile(r"^\s*(queued|running|succeeded)\s*$"))

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "admin_jobs_after_retry.png")
    job = await wait_for_job(
        app.state.db, dead.id, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED
    )
    assert job.attempts <= 1  # a fresh set of attempts; it had used all 3


async def _select_row(page: Page, text: str) -> None:
    row = page.locator("table tbody tr", has_text=text)
    await expect(row).to_have_count(1)
    await row.locator("input.select-box").check()
