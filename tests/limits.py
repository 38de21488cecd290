"""Driving rate limits in tests: the test Redis, and the app served for real on a socket."""

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio
import uvicorn
from fastapi import FastAPI
from redis.exceptions import RedisError

from tests.conftest import IN_CI

REDIS_URL = "redis://127.0.0.1:6379/14"
# Made once: building a TLS context per client loads the CA bundle, a 100 ms stall of the loop.
_TLS = ssl.create_default_context()


async def require_redis() -> str:
    """The test Redis; required in CI, skipped without it locally."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"CI needs Redis at {REDIS_URL}: {exc!r}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc!r}")
    finally:
        await client.aclose()
    return REDIS_URL


@asynccontextmanager
async def serve(app: FastAPI, *, forwarded_allow_ips: str) -> AsyncIterator[str]:
    """The app (its lifespan already running) behind a real uvicorn on 127.0.0.1, configured
    for proxies as `python -m app serve` is; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def send(
    base_url: str, method: str, path: str, *, source: str = "127.0.0.1", **kwargs: Any
) -> httpx.Response:
    """One request over a TCP connection from the loopback address `source`."""
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=_TLS)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        return await http.request(method, path, **kwargs)


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 3600
    assert set(response.json()) == {"detail"}


def assert_limited_page(response: httpx.Response) -> None:
    """A 429 of the HTML link pages: a page of theirs, with Retry-After."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["X-Frame-Options"] == "DENY"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 3600
    assert f"try again in {retry_after} seconds" in response.text
