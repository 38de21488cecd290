"""create_app builds everything a request needs: the first request does no setup of its own."""

from typing import Any

import httpx
import pytest
from fastapi import routing


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
