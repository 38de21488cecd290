"""`python -m app` as an operator runs it: a real process with its own environment."""

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.security import password_hash

ROOT = Path(__file__).parents[1]
ADMIN_PASSWORD = "admin password 123"
UNREACHABLE_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
TIMEOUT_S = 60


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def env(tmp_path: Path, db_path: Path) -> dict[str, str]:
    """The caller's environment without any app setting, pointed at a fresh SQLite file."""
    app_variables = {name.upper() for name in Settings.model_fields}
    clean = {name: value for name, value in os.environ.items() if name not in app_variables}
    return clean | {
        "DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "DATA_DIR": str(tmp_path / "data"),
        # The project on the import path, so the working directory (and any .env in the
        # project) can be the test's own.
        "PYTHONPATH": str(ROOT),
    }


def run(
    env: dict[str, str], cwd: Path, *args: str, **overrides: str
) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS`."""
    return python(env | overrides, cwd, "-m", "app", *args)


def python(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def create_superuser(
    env: dict[str, str],
    cwd: Path,
    email: str = "admin@example.com",
    password: str = ADMIN_PASSWORD,
    **overrides: str,
) -> subprocess.CompletedProcess[str]:
    overrides["SUPERUSER_PASSWORD"] = password
    return run(env, cwd, "createsuperuser", "--email", email, **overrides)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def tables(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def migrated(env: dict[str, str], cwd: Path) -> None:
    result = run(env, cwd, "migrate")
    assert result.returncode == 0, result.stderr


# --- migrate ------------------------------------------------------------------------------


def test_migrate_creates_the_tables_on_a_fresh_sqlite_file(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    result = run(env, tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert {"alembic_version", "users", "refresh_tokens", "idempotency_keys"} <= tables(db_path)


def test_migrate_twice_is_a_no_op(env: dict[str, str], tmp_path: Path, db_path: Path) -> None:
    migrated(env, tmp_path)
    before = tables(db_path)
    result = run(env, tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert tables(db_path) == before


def test_migrate_with_an_unreachable_database_is_one_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run(env, tmp_path, "migrate", DATABASE_URL=UNREACHABLE_POSTGRES)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)
    assert len(error_lines(result)) == 1


# --- serve refuses to start ----------------------------------------------------------------


def test_serve_refuses_an_unmigrated_database(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, tmp_path, "serve", "--port", str(free_port()))
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "python -m app migrate" in line


def test_serve_refusing_an_unmigrated_database_prints_only_the_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run(env, tmp_path, "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)


def test_serve_refuses_a_sync_driver_url_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, tmp_path, "serve", DATABASE_URL="postgresql://postgres@127.0.0.1/app")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)
    [line] = error_lines(result)
    assert "DATABASE_URL" in line


def test_serve_refuses_an_unreachable_database_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run(env, tmp_path, "serve", DATABASE_URL=UNREACHABLE_POSTGRES)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)
    [line] = error_lines(result)
    assert line.startswith("error: cannot reach the database")


def test_serve_hides_the_database_password_when_it_cannot_connect(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = "postgresql+asyncpg://postgres:hunter2secret@127.0.0.1:1/x"
    result = run(env, tmp_path, "serve", DATABASE_URL=url)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "hunter2secret" not in result.stderr


def test_serve_refuses_a_too_short_first_superuser_password_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrated(env, tmp_path)
    result = run(
        env,
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        FIRST_SUPERUSER_EMAIL="root@example.com",
        FIRST_SUPERUSER_PASSWORD="short",
    )
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "FIRST_SUPERUSER_PASSWORD" in line


# --- createsuperuser ------------------------------------------------------------------------


def stored_superuser(db_path: Path, email: str) -> tuple[int, int, str] | None:
    with sqlite3.connect(db_path) as conn:
        row: tuple[int, int, str] | None = conn.execute(
            "SELECT is_superuser, is_verified, hashed_password FROM users WHERE email = ?",
            (email,),
        ).fetchone()
    return row


def test_createsuperuser_creates_a_verified_superuser(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    migrated(env, tmp_path)
    result = create_superuser(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "admin@example.com" in result.stdout
    stored = stored_superuser(db_path, "admin@example.com")
    assert stored is not None
    is_superuser, is_verified, hashed = stored
    assert (is_superuser, is_verified) == (1, 1)
    assert password_hash.verify(ADMIN_PASSWORD, hashed)


@pytest.mark.parametrize("email", ["admin@example.com", "ADMIN@Example.com"])
def test_createsuperuser_refuses_a_taken_email(
    env: dict[str, str], tmp_path: Path, db_path: Path, email: str
) -> None:
    migrated(env, tmp_path)
    first = create_superuser(env, tmp_path)
    assert first.returncode == 0, first.stderr
    again = create_superuser(env, tmp_path, email, password="x" * 12)
    assert again.returncode == 1
    assert len(error_lines(again)) == 1
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_createsuperuser_refuses_an_invalid_email(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    migrated(env, tmp_path)
    result = create_superuser(env, tmp_path, "not-an-email")
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "email" in line
    assert stored_superuser(db_path, "not-an-email") is None


def test_createsuperuser_refuses_a_short_password(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    migrated(env, tmp_path)
    result = create_superuser(env, tmp_path, password="short")
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "password" in line
    assert stored_superuser(db_path, "admin@example.com") is None


def test_createsuperuser_on_an_unmigrated_database_is_one_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = create_superuser(env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)
    assert len(error_lines(result)) == 1


def test_createsuperuser_with_an_unreachable_database_is_one_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = create_superuser(env, tmp_path, DATABASE_URL=UNREACHABLE_POSTGRES)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == error_lines(result)
    assert len(error_lines(result)) == 1


# --- serve serves ---------------------------------------------------------------------------


@contextlib.contextmanager
def serving(
    env: dict[str, str], cwd: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`serve` on a migrated database, with its output in files (a full pipe would stall it)."""
    migrated(env, cwd)
    port = free_port()
    with (cwd / "serve.log").open("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), *args],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            yield process, f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(TIMEOUT_S)


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with serving(env, tmp_path) as running:
        yield running


def wait_until_live(process: subprocess.Popen[str], base_url: str, log: Path) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
        try:
            return httpx.get(f"{base_url}/health/live", timeout=2)
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"serve did not answer within 30 s:\n{log.read_text()}")


def test_serve_answers_health_live(
    server: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, base_url = server
    response = wait_until_live(process, base_url, tmp_path / "serve.log")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_serve_believes_x_forwarded_for_only_from_forwarded_allow_ips(
    env: dict[str, str], tmp_path: Path
) -> None:
    # In .env, which uvicorn does not read itself: `serve` must hand the setting over.
    (tmp_path / ".env").write_text("FORWARDED_ALLOW_IPS=127.0.0.5\n")
    with serving(env | {"RATE_LIMIT_FORGOT": "2/minute"}, tmp_path) as (process, base_url):
        wait_until_live(process, base_url, tmp_path / "serve.log")

        def forgot(source: str, n: int) -> int:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, base_url=base_url, timeout=TIMEOUT_S) as http:
                response = http.post(
                    "/api/v1/auth/forgot-password",
                    json={"email": f"nobody-{source}-{n}@example.com"},
                    headers={"X-Forwarded-For": f"203.0.113.{n}"},
                )
                return response.status_code

        # 127.0.0.1 is no longer trusted: its forwarded addresses are ignored, it is one client.
        assert [forgot("127.0.0.1", n) for n in range(3)] == [202, 202, 429]
        assert [forgot("127.0.0.5", n) for n in range(4)] == [202] * 4


def test_serve_shuts_down_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, base_url = server
    wait_until_live(process, base_url, tmp_path / "serve.log")
    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down, so the exit status is the signal's.
    assert process.wait(TIMEOUT_S) in (0, -signal.SIGTERM)
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


def insert_dead_job(db_path: Path) -> str:
    job_id = "5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f"
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO jobs (id, name, payload, status, attempts, max_attempts, last_error,"
            " run_at, created_at, updated_at) VALUES (?, 'send_welcome_email', '{}', 'dead',"
            " 8, 8, 'SMTPServerDisconnected: gone', '2026-01-01 00:00:00',"
            " '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            (job_id,),
        )
    return job_id


def test_jobs_list_shows_status_attempts_and_error(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    assert run(env, tmp_path, "migrate").returncode == 0
    insert_dead_job(db_path)
    result = run(env, tmp_path, "jobs", "list", "--status", "dead")
    assert result.returncode == 0, result.stderr
    assert "dead" in result.stdout
    assert "8/8" in result.stdout
    assert "SMTPServerDisconnected: gone" in result.stdout
    assert "1 job(s), newest first\n" in result.stdout


def test_jobs_retry_queues_a_dead_job_again(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    assert run(env, tmp_path, "migrate").returncode == 0
    job_id = insert_dead_job(db_path)
    dashed = f"{job_id[:8]}-{job_id[8:12]}-{job_id[12:16]}-{job_id[16:20]}-{job_id[20:]}"
    result = run(env, tmp_path, "jobs", "retry", dashed)
    assert result.returncode == 0, result.stderr
    assert "queued again" in result.stdout
    with sqlite3.connect(db_path) as conn:
        status, attempts = conn.execute("SELECT status, attempts FROM jobs").fetchone()
    assert (status, attempts) == ("queued", 0)


def test_jobs_retry_of_an_unknown_job_is_one_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, tmp_path, "migrate").returncode == 0
    result = run(env, tmp_path, "jobs", "retry", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1
    assert error_lines(result) == ["error: Job not found"]


def test_worker_without_a_broker_explains_itself(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, tmp_path, "worker")
    assert result.returncode == 1
    assert error_lines(result) == [
        "error: BROKER_URL is empty: jobs run inside the API process, no worker needed"
    ]


def test_metrics_add_up_across_worker_processes(env: dict[str, str], tmp_path: Path) -> None:
    """With --workers 2 every scrape reports the requests of both processes, whichever answers."""
    log = tmp_path / "serve.log"
    samples = tmp_path / "metrics"
    samples.mkdir()
    env = env | {"PROMETHEUS_MULTIPROC_DIR": str(samples)}
    with serving(env, tmp_path, "--workers", "2") as (process, base_url):
        wait_until_live(process, base_url, log)
        deadline = time.monotonic() + 30
        while log.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        expected = 'http_requests_total{method="GET",route="/api/v1/users/me",status="401"} 40.0'
        # A new connection per request, so the kernel spreads them over both processes.
        for _ in range(40):
            assert httpx.get(f"{base_url}/api/v1/users/me").status_code == 401
        for _ in range(6):
            response = httpx.get(f"{base_url}/metrics")
            assert response.status_code == 200
            assert expected in response.text
    counter_files = {path.name for path in samples.glob("counter_*.db")}
    assert len(counter_files) == 2, counter_files  # both processes counted requests


def test_worker_passes_other_options_on_to_celery(env: dict[str, str], tmp_path: Path) -> None:
    """-n reaches celery worker, which then judges --pool itself: the options went through."""
    result = run(
        env,
        tmp_path,
        "worker",
        "-n",
        "second@%h",
        "--pool",
        "no-such-pool",
        BROKER_URL="redis://127.0.0.1:1/0",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'no-such-pool' is not one of" in output
    assert "unrecognized arguments" not in output


def test_other_commands_refuse_unknown_options(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, tmp_path, "migrate", "--frobnicate")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr


LIFESPAN_FREEZE_COUNTS = """
import asyncio, gc
from app.main import create_app

async def main():
    app = create_app()
    async with app.router.lifespan_context(app):
        running = gc.get_freeze_count()
    print(running, gc.get_freeze_count())

asyncio.run(main())
"""


def test_the_objects_of_startup_are_left_out_of_full_collections(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Frozen while the app runs, so no full collection stops the loop to scan them, and
    collectable again once it stopped. In a process of its own: counting the frozen objects
    of the test process would itself hold its loop."""
    migrated(env, tmp_path)
    result = python(env, tmp_path, "-c", LIFESPAN_FREEZE_COUNTS)
    assert result.returncode == 0, result.stderr
    running, stopped = map(int, result.stdout.split())
    assert running > 10_000
    assert stopped == 0


WORKER_FREEZE_COUNTS = """
import gc
from celery.signals import worker_init, worker_process_init
import app.worker

counts = [gc.get_freeze_count()]
for signal in (worker_init, worker_process_init):
    gc.unfreeze()
    signal.send(sender=None)
    counts.append(gc.get_freeze_count())
print(*counts)
"""


def test_celery_processes_leave_their_startup_objects_out_of_full_collections(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The consumer as it starts (before it forks its pool) and each pool process as it is
    ready, on the signals Celery sends them there."""
    result = python(env, tmp_path, "-c", WORKER_FREEZE_COUNTS)
    assert result.returncode == 0, result.stderr
    before, consumer, pool_process = map(int, result.stdout.split())
    assert before == 0
    assert consumer > 10_000
    assert pool_process > 10_000


IMPORT_WORKER_THEN_FIND_IT = """
import app.worker
print("imported")
from celery.app.utils import find_app
celery = find_app("app.worker")  # what `celery -A app.worker` does
print(celery.conf.broker_url, "jobs.run" in celery.tasks)
from app.services.job_registry import registry
print(*sorted(registry.definitions))  # every job of JOB_MODULES, none imported by hand
"""


def test_the_worker_module_does_nothing_at_import_and_builds_celery_when_asked(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Importing it reads no settings (a production environment without SECRET_KEY would
    refuse to load them); `celery -A app.worker` finds an app built from the environment."""
    refused = python(env | {"ENVIRONMENT": "production"}, tmp_path, "-c", "import app.worker")
    assert refused.returncode == 0, refused.stderr
    found = python(
        env | {"BROKER_URL": "redis://127.0.0.1:6379/14"},
        tmp_path,
        "-c",
        IMPORT_WORKER_THEN_FIND_IT,
    )
    assert found.returncode == 0, found.stderr
    imported, built, known = found.stdout.splitlines()
    assert imported == "imported"
    assert built == "redis://127.0.0.1:6379/14 True"
    assert known.split() == [
        "prune_history",
        "send_api_key_created_email",
        "send_password_reset_email",
        "send_welcome_email",
    ]


def test_prune_deletes_old_history_now_and_says_what(
    env: dict[str, str], tmp_path: Path, db_path: Path
) -> None:
    assert run(env, tmp_path, "migrate").returncode == 0
    dead = insert_dead_job(db_path)  # dead since January 2026, past DEAD_JOB_RETENTION_DAYS
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO jobs (id, name, payload, status, attempts, max_attempts,"
            " run_at, created_at, updated_at) VALUES (?, 'send_welcome_email', '{}', 'queued',"
            " 0, 8, '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            ("0" * 31 + "1",),
        )
    result = run(env, tmp_path, "prune", DEAD_JOB_RETENTION_DAYS="30")
    assert result.returncode == 0, result.stderr
    assert "jobs: 1 deleted" in result.stdout.splitlines()
    assert "refresh_tokens: 0 deleted" in result.stdout.splitlines()
    with sqlite3.connect(db_path) as conn:
        left = [row[0] for row in conn.execute("SELECT id FROM jobs")]
    assert left == ["0" * 31 + "1"]  # a queued job is never pruned, however old
    assert dead not in left
