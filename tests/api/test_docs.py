"""API docs that work offline: Swagger UI and ReDoc with assets served by the service itself."""

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import PASSWORD, MakeUser, make_settings

TOKEN_URL = "/api/v1/auth/token"
REFERENCE = re.compile(r"""(?:src|href)="([^"]+)\"""")
ASSET_TYPES = {
    ".js": ("application/javascript", "text/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


@pytest.fixture
def docs_app(tmp_path: Path) -> FastAPI:
    """The app without its lifespan: the docs need no database."""
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))
    # FastAPI builds the schema on the loop at the first request (about 0.1 s): here, where the
    # blocked-loop guard does not look, so the tests check the content.
    app.openapi()
    return app


@pytest.fixture
async def docs_client(docs_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=docs_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def references(html: str) -> list[str]:
    found = REFERENCE.findall(html)
    assert found, html
    return found


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_references_only_local_urls(
    docs_client: httpx.AsyncClient, page: str
) -> None:
    response = await docs_client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text
    assert "https://" not in response.text
    assert all(url.startswith("/static/docs/") for url in references(response.text))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_every_asset_of_a_docs_page_is_served(
    docs_client: httpx.AsyncClient, page: str
) -> None:
    html = (await docs_client.get(page)).text
    for url in references(html):
        asset = await docs_client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        content_type = asset.headers["content-type"]
        assert content_type.startswith(ASSET_TYPES[Path(url).suffix]), (url, content_type)


async def test_swagger_ui_loads_the_schema_the_service_serves(
    docs_client: httpx.AsyncClient,
) -> None:
    html = (await docs_client.get("/docs")).text
    assert "url: '/openapi.json'" in html
    redoc = (await docs_client.get("/redoc")).text
    assert 'spec-url="/openapi.json"' in redoc


async def test_openapi_lists_the_api_paths(docs_client: httpx.AsyncClient) -> None:
    response = await docs_client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Accounts service"
    assert {
        "/api/v1/auth/register",
        TOKEN_URL,
        "/api/v1/auth/refresh",
        "/api/v1/users/me",
        "/api/v1/users/{user_id}",
        "/api/v1/jobs",
        "/health/live",
    } <= set(schema["paths"])
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(schema["paths"])


@pytest.mark.parametrize(
    ("path", "filters"), [("/api/v1/users", set()), ("/api/v1/jobs", {"status", "name"})]
)
async def test_openapi_shows_each_list_paged_by_cursor(
    docs_client: httpx.AsyncClient, path: str, filters: set[str]
) -> None:
    schema = (await docs_client.get("/openapi.json")).json()
    operation = schema["paths"][path]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"limit", "cursor"} | filters
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 50)
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"items", "next_cursor"}


async def test_swagger_authorize_uses_the_token_endpoint(docs_client: httpx.AsyncClient) -> None:
    schema = (await docs_client.get("/openapi.json")).json()
    [scheme] = schema["components"]["securitySchemes"].values()
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"]["tokenUrl"] == TOKEN_URL
    assert schema["paths"]["/api/v1/users/me"]["get"]["security"]
    html = (await docs_client.get("/docs")).text
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    redirect = await docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "oauth2" in redirect.text


async def test_the_form_swagger_authorize_sends_gets_a_working_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    # What Swagger UI posts for the OAuth2 password flow, without client credentials.
    form = {"grant_type": "password", "username": user.email, "password": PASSWORD}
    response = await client.post(TOKEN_URL, data=form)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["email"] == user.email


async def test_docs_behind_a_path_prefix_use_the_prefix(docs_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=docs_app, root_path="/accounts")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        html = (await client.get("/docs")).text
    assert "url: '/accounts/openapi.json'" in html
    assert all(url.startswith("/accounts/static/docs/") for url in references(html))
