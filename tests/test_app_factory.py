"""create_app builds everything a request needs, once: the first request does no setup of its
own, and building another app changes nothing of the process."""

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import routing

from app.main import create_app
from tests.conftest import make_settings


async def test_the_first_requests_resolve_no_routes(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI resolves an included router's routes lazily, 60-80 ms with the loop stopped."""
    resolved: list[object] = []
    resolve = routing._IncludedRouter._build_effective_context

    def counted(self: routing._IncludedRouter, route: Any) -> Any:
        resolved.append(route)
        return resolve(self, route)

    monkeypatch.setattr(routing._IncludedRouter, "_build_effective_context", counted)

    assert (await client.get("/api/v1/users/me")).status_code == 401
    assert (await client.get("/admin/")).status_code == 302
    assert (await client.get("/health/live")).status_code == 200
    assert resolved == []


def test_building_apps_leaves_the_import_path_as_it_was(tmp_path: Path) -> None:
    """A process that builds many apps (a test run builds thousands) keeps a short sys.path:
    every failed import looks in each of its entries."""
    path = list(sys.path)
    for _ in range(3):
        create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))
    assert sys.path == path
