"""The API generates a clean client: short unique operation ids, every error answer documented,
and a Python client generated from the live /openapi.json that signs a user in and out.

The generated-client test runs on SQLite only: it proves what the schema says, which the
database plays no part in (the flows themselves are tested on both backends elsewhere).
"""

import asyncio
import importlib
import json
import re
import ssl
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import PASSWORD, MakeUser, make_settings
from tests.limits import serve

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "accounts_client"
GENERATE_TIMEOUT_S = 60
OPERATION_ID = re.compile(r"^[a-z]+(?:-[a-z]+)*-[a-z]+(?:_[a-z]+)*$")
# Made once: a client building its own TLS context stalls the loop for about 100 ms.
TLS = ssl.create_default_context()


@pytest.fixture
def schema(tmp_path: Path) -> dict[str, Any]:
    """The schema of an app that is not started: the ids and responses need no database."""
    return create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")).openapi()


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for operation in item.values():
            yield path, operation


def test_operation_ids_are_tag_and_function_and_unique(schema: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, operation in operations(schema)]
    assert len(ids) == len(set(ids))
    for _, operation in operations(schema):
        assert OPERATION_ID.match(operation["operationId"]), operation["operationId"]
        assert operation["operationId"].startswith(operation["tags"][0] + "-")
    assert {"auth-register", "auth-token", "users-read_me", "health-ready"} <= set(ids)


def test_a_route_without_a_tag_fails_at_startup(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))

    async def untagged() -> None:
        pass

    with pytest.raises(ValueError, match="needs a tag"):
        app.add_api_route("/untagged", untagged)


def test_every_error_answer_has_a_json_body(schema: dict[str, Any]) -> None:
    for path, operation in operations(schema):
        for status, answer in operation["responses"].items():
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"], (path, status)


def test_each_route_documents_the_errors_its_dependencies_give(schema: dict[str, Any]) -> None:
    for path, operation in operations(schema):
        answers = operation["responses"]
        if "security" in operation:  # a bearer token is read
            assert "401" in answers, path
        if "{" in path:  # an id that may name nothing
            assert "404" in answers, path
        if path.startswith("/api/v1/"):  # behind the body and admission middleware
            assert {"408", "413", "503"} <= set(answers), path
    ready = schema["paths"]["/health/ready"]["get"]["responses"]["503"]
    assert ready["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Readiness"
    }


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the client is generated; importable, and forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
        del sys.modules[name]


async def generate_client(schema: bytes, directory: Path) -> str:
    """Run openapi-python-client on the schema; what it printed."""
    (directory / "openapi.json").write_bytes(schema)
    # No post hooks (ruff): all it prints is then about the schema.
    (directory / "config.json").write_text(json.dumps({"post_hooks": []}))
    process = await asyncio.create_subprocess_exec(
        str(GENERATOR),
        "generate",
        "--path",
        str(directory / "openapi.json"),
        "--output-path",
        str(directory / PACKAGE),
        "--meta",
        "none",
        "--config",
        str(directory / "config.json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(GENERATE_TIMEOUT_S):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def load(module: str) -> ModuleType:
    # In a thread: importing the generated package takes longer than the loop may stall.
    return await asyncio.to_thread(importlib.import_module, f"{PACKAGE}.{module}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_generated_client_registers_logs_in_refreshes_and_logs_out(
    app: FastAPI, generated: Path, make_user: MakeUser
) -> None:
    async with serve(app, forwarded_allow_ips="127.0.0.1") as url:
        async with httpx.AsyncClient(base_url=url, verify=TLS) as http:
            live_schema = (await http.get("/openapi.json")).content
        printed = await generate_client(live_schema, generated)
        assert "Warning" not in printed, printed

        client_module, models = await load("client"), await load("models")
        flows = ("register", "token", "refresh", "logout")
        auth = {name: await load(f"api.auth.auth_{name}") for name in flows}
        read_me = await load("api.users.users_read_me")
        list_users = await load("api.users.users_list_users")
        anonymous = client_module.Client(base_url=url, verify_ssl=TLS)
        email = f"client-{uuid.uuid4().hex[:12]}@example.com"

        body = models.UserCreate(email=email, name="Generated", password=PASSWORD)
        created = await auth["register"].asyncio(client=anonymous, body=body)
        assert isinstance(created, models.UserRead)
        assert (created.email, created.is_verified) == (email, False)
        taken = await auth["register"].asyncio(client=anonymous, body=body)
        assert isinstance(taken, models.ErrorMessage)  # the documented 409, parsed

        form = models.BodyAuthToken(username=email, password=PASSWORD)
        tokens = await auth["token"].asyncio(client=anonymous, body=form)
        assert isinstance(tokens, models.TokenPair)
        assert tokens.token_type == "bearer"
        wrong = models.BodyAuthToken(username=email, password="not the password")
        assert isinstance(
            await auth["token"].asyncio(client=anonymous, body=wrong), models.ErrorMessage
        )

        signed_in = client_module.AuthenticatedClient(
            base_url=url, token=tokens.access_token, verify_ssl=TLS
        )
        me = await read_me.asyncio(client=signed_in)
        assert isinstance(me, models.UserRead)
        assert me.id == created.id

        refresh = models.RefreshRequest(refresh_token=tokens.refresh_token)
        renewed = await auth["refresh"].asyncio(client=anonymous, body=refresh)
        assert isinstance(renewed, models.TokenPair)
        assert renewed.refresh_token != tokens.refresh_token

        renewed_client = client_module.AuthenticatedClient(
            base_url=url, token=renewed.access_token, verify_ssl=TLS
        )
        logout = models.RefreshRequest(refresh_token=renewed.refresh_token)
        ended = await auth["logout"].asyncio_detailed(client=renewed_client, body=logout)
        assert ended.status_code == 204
        after = await read_me.asyncio_detailed(client=renewed_client)
        assert after.status_code == 401
        assert isinstance(after.parsed, models.ErrorMessage)
        assert after.parsed.detail == "Invalid or expired token"

        # A list's 422 has two documented shapes; a foreign cursor's parses as ErrorMessage.
        admin = await make_user(is_superuser=True)
        form = models.BodyAuthToken(username=admin.email, password=PASSWORD)
        admin_tokens = await auth["token"].asyncio(client=anonymous, body=form)
        as_admin = client_module.AuthenticatedClient(
            base_url=url, token=admin_tokens.access_token, verify_ssl=TLS
        )
        page = await list_users.asyncio(client=as_admin, limit=1)
        assert isinstance(page, models.PageUserRead)
        assert page.next_cursor
        bad = await list_users.asyncio_detailed(client=as_admin, cursor=page.next_cursor + "x")
        assert bad.status_code == 422
        assert isinstance(bad.parsed, models.ErrorMessage)
        assert bad.parsed.detail.startswith("Invalid cursor")
