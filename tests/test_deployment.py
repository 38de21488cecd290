"""The deployment files describe a service that can run: every command, setting and path they
name exists in the code. Docker is not needed; the files are parsed and checked.
"""

import fnmatch
import functools
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # installed with uvicorn[standard], no stubs

from app.core.config import Settings

ROOT = Path(__file__).parents[1]
TIMEOUT_S = 60
APP_IMAGE = "accounts-service"
SETTINGS = {name.upper() for name in Settings.model_fields}


def clean_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without any app setting, with the project on the import path."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    return env | {"PYTHONPATH": str(ROOT)} | overrides


@functools.cache
def command_help(subcommand: str) -> str:
    """`python -m app SUBCOMMAND --help`, which fails for a subcommand that does not exist."""
    result = subprocess.run(
        [sys.executable, "-m", "app", subcommand, "--help"],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"python -m app {subcommand}: {result.stderr}"
    return result.stdout


def assert_runs_the_app(command: list[str]) -> None:
    """A `python -m app SUBCOMMAND --option ...` command with a real subcommand and options."""
    assert command[:3] == ["python", "-m", "app"], command
    usage = command_help(command[3])
    assert usage.startswith(f"usage: python -m app {command[3]}"), usage
    for option in (arg for arg in command[4:] if arg.startswith("--")):
        assert option in usage, f"{option} is not an option of python -m app {command[3]}"


# --- compose.yaml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == APP_IMAGE
    }
    assert set(services) == {"migrate", "api", "worker"}
    return services


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME:?error}` and `${NAME:-default}`, enough for this file."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, word = match.groups()
        if variables.get(name):
            return variables[name]
        if operator == ":?":
            raise LookupError(f"{name}: {word}")
        return str(word or "")

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", substitute, value)


def test_every_app_service_is_built_from_this_directory(
    app_services: dict[str, dict[str, Any]],
) -> None:
    for service in app_services.values():
        assert service["build"] == "."


def test_every_app_service_runs_a_real_app_command(
    app_services: dict[str, dict[str, Any]],
) -> None:
    commands = {name: service["command"] for name, service in app_services.items()}
    assert commands["migrate"][3] == "migrate"
    assert commands["api"][3] == "serve"
    assert commands["worker"][3] == "worker"
    for command in commands.values():
        assert_runs_the_app(command)


def test_every_variable_of_an_app_service_is_a_setting(
    app_services: dict[str, dict[str, Any]],
) -> None:
    for name, service in app_services.items():
        unknown = set(service["environment"]) - SETTINGS
        assert not unknown, f"{name}: {unknown} are not settings"


def test_the_environment_is_a_valid_production_configuration(
    app_services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    variables = {"SECRET_KEY": secrets.token_urlsafe(48), "SMTP_HOST": "smtp.example.com"}
    for service in app_services.values():
        values: dict[str, Any] = {
            name.lower(): interpolate(str(value), variables)
            for name, value in service["environment"].items()
        }
        settings = Settings(_env_file=None, **values)
        assert settings.environment == "production"
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert settings.broker_url.startswith("redis://")
        assert settings.secret_key == variables["SECRET_KEY"]


def test_compose_refuses_to_start_without_a_secret_key(
    app_services: dict[str, dict[str, Any]],
) -> None:
    for service in app_services.values():
        with pytest.raises(LookupError, match="SECRET_KEY"):
            interpolate(service["environment"]["SECRET_KEY"], {})


def test_compose_refuses_to_start_without_an_smtp_host(
    app_services: dict[str, dict[str, Any]],
) -> None:
    for service in app_services.values():
        with pytest.raises(LookupError, match="SMTP_HOST"):
            interpolate(service["environment"]["SMTP_HOST"], {})


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"


def test_the_api_publishes_the_port_it_serves_and_the_image_exposes(
    compose: dict[str, Any],
) -> None:
    [mapping] = compose["services"]["api"]["ports"]
    assert mapping.split(":")[-1] == str(Settings.model_fields["port"].default)
    assert dockerfile_arguments("EXPOSE") == ["8000"]


def test_postgres_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    [volume] = compose["services"]["postgres"]["volumes"]
    name = volume.split(":")[0]
    assert name in compose["volumes"]


def test_the_api_has_time_to_drain_before_it_is_killed(compose: dict[str, Any]) -> None:
    grace = compose["services"]["api"]["stop_grace_period"]
    assert grace.endswith("s")
    defaults = Settings.model_fields
    needed = defaults["shutdown_grace_seconds"].default
    needed += defaults["job_shutdown_grace_seconds"].default
    assert int(grace.removesuffix("s")) > needed


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The instructions, with continuation lines joined and comments left out."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_arguments(keyword: str) -> list[str]:
    return [rest for found, rest in dockerfile() if found == keyword]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY."""
    result = []
    for rest in dockerfile_arguments("COPY"):
        *sources, destination = [word for word in shlex.split(rest) if not word.startswith("--")]
        result.append((sources, destination))
    return result


def test_the_image_is_python_3_11_slim_like_the_lock_file() -> None:
    [base] = dockerfile_arguments("FROM")
    assert base == "python:3.11-slim"
    assert "--python-version 3.11" in (ROOT / "requirements.lock").read_text()


def test_every_copied_path_exists() -> None:
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_image_installs_the_lock_file_with_hashes() -> None:
    [destination] = [dest for sources, dest in copies() if sources == ["requirements.lock"]]
    installs = [rest for rest in dockerfile_arguments("RUN") if "pip install" in rest]
    assert len(installs) == 1
    assert f"--require-hashes -r {destination}" in installs[0]


def test_the_image_copies_the_app_and_its_migrations() -> None:
    copied = {source.rstrip("/") for sources, _ in copies() for source in sources}
    assert {"app", "alembic", "alembic.ini"} <= copied


def test_the_image_runs_as_a_user_other_than_root() -> None:
    users = dockerfile_arguments("USER")
    assert users
    assert users[-1] not in ("root", "0")


def test_the_image_runs_in_production_by_default() -> None:
    variables = dict(
        assignment.split("=", 1)
        for rest in dockerfile_arguments("ENV")
        for assignment in shlex.split(rest)
    )
    assert variables["ENVIRONMENT"] == "production"


def test_the_default_command_serves_on_every_interface() -> None:
    [command] = dockerfile_arguments("CMD")
    arguments = json.loads(command)
    assert_runs_the_app(arguments)
    assert arguments[3] == "serve"
    assert arguments[arguments.index("--host") + 1] == "0.0.0.0"


def healthcheck_command() -> list[str]:
    [healthcheck] = dockerfile_arguments("HEALTHCHECK")
    _, _, command = healthcheck.partition("CMD ")
    arguments: list[str] = json.loads(command)
    assert arguments[0] == "python"
    return [sys.executable, *arguments[1:]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_healthcheck_passes_on_a_live_server_and_fails_without_one(tmp_path: Path) -> None:
    port = str(free_port())
    env = clean_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        DATA_DIR=str(tmp_path / "data"),
        PORT=port,
    )

    def check() -> int:
        return subprocess.run(
            healthcheck_command(), env=env, capture_output=True, timeout=TIMEOUT_S, check=False
        ).returncode

    assert check() != 0  # nothing listens yet
    migrate = [sys.executable, "-m", "app", "migrate"]
    subprocess.run(
        migrate, env=env, cwd=tmp_path, capture_output=True, timeout=TIMEOUT_S, check=True
    )
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        assert check() == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(TIMEOUT_S)


# --- .dockerignore --------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a directory's match covers
    everything inside it."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            result = not negated
    return result


def test_the_build_context_holds_what_the_image_copies() -> None:
    for sources, _ in copies():
        for source in sources:
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert "__pycache__" in relative or not ignored(relative), relative


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "data/app.db",
        "data/secret_key",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
    ],
)
def test_the_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert ignored(path)


def test_the_build_context_leaves_out_bytecode() -> None:
    assert ignored("app/__pycache__/main.cpython-311.pyc")
