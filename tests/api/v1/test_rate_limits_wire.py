"""Rate limits against attacks on the wire: a real uvicorn, clients bound to several loopback
addresses (127.0.0.2 is "another client"), counters in this process and in Redis.

What must hold: failures are counted, not requests; an attacker elsewhere cannot lock the owner
out; a refused attempt costs no password hashing; X-Forwarded-For is believed only from a
trusted proxy.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core import security
from app.core.config import Settings
from app.db.models import User
from app.main import create_app
from app.services import auth
from tests.conftest import PASSWORD, empty_tables
from tests.limits import assert_limited, assert_limited_page, require_redis, send, serve

LIMIT = 3
EMAIL_BUDGET = 2 * LIMIT
CLIENT_BUDGET = 10
TOKEN = "/api/v1/auth/token"
ME = "/api/v1/users/me"
OWNER, ATTACKERS = "127.0.0.1", ("127.0.0.2", "127.0.0.3", "127.0.0.4")
WRONG = "not the password"


@dataclass
class Server:
    app: FastAPI
    url: str
    settings: Settings

    async def get(self, path: str, source: str = OWNER, **kwargs: Any) -> httpx.Response:
        return await send(self.url, "GET", path, source=source, **kwargs)

    async def post(self, path: str, source: str = OWNER, **kwargs: Any) -> httpx.Response:
        return await send(self.url, "POST", path, source=source, **kwargs)

    async def login(self, email: str, password: str = PASSWORD, source: str = OWNER) -> Any:
        return await self.post(TOKEN, source, data={"username": email, "password": password})

    async def add_user(self, email: str, **fields: Any) -> User:
        hashed_password = await security.hash_password(PASSWORD)
        user = User(email=email, name="Owner", hashed_password=hashed_password, **fields)
        async with self.app.state.db.transaction() as session:
            session.add(user)
        return user


Start = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["memory", "redis"])
async def start(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Start]:
    """Starts the app on a socket with tight limits; counters in memory or in Redis."""
    redis_url = await require_redis() if request.param == "redis" else ""
    limit = f"{LIMIT}/minute"
    values: dict[str, Any] = {
        "rate_limit_enabled": True,
        "rate_limit_token": limit,
        "rate_limit_token_email": f"{EMAIL_BUDGET}/minute",
        "rate_limit_token_client": f"{CLIENT_BUDGET}/minute",
        "rate_limit_admin_login": limit,
        "rate_limit_forgot": limit,
        "rate_limit_refresh": limit,
        "rate_limit_verify": limit,
        "rate_limit_reset": limit,
        "rate_limit_password_change": limit,
        "redis_url": redis_url,
        # Counters of this test alone, whoever else uses the test Redis at the same time.
        "rate_limit_key_prefix": f"test-{uuid.uuid4().hex}",
    }

    async def stop(app: FastAPI) -> None:
        await app.state.jobs.stop()
        checked_out = app.state.db.engine.pool.checkedout()
        await empty_tables(app)
        assert checked_out == 0, f"{checked_out} connection(s) still checked out"

    async with AsyncExitStack() as stack:

        async def begin(**overrides: Any) -> Server:
            app_settings = settings.model_copy(update=values | overrides)
            app = await asyncio.to_thread(create_app, app_settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            stack.push_async_callback(stop, app)
            url = await stack.enter_async_context(
                serve(app, forwarded_allow_ips=app_settings.forwarded_allow_ips)
            )
            return Server(app, url, app_settings)

        yield begin


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The emails whose password was checked (lookup and Argon2), in order."""
    checked: list[str] = []
    real = auth.check_password

    async def counting(db: Any, *, email: str, password: str) -> Any:
        checked.append(email)
        return await real(db, email=email, password=password)

    monkeypatch.setattr(auth, "check_password", counting)
    return checked


@pytest.fixture
def count_hashes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """Called once the test's users exist: the passwords hashed with Argon2 from then on."""

    def start_counting() -> list[str]:
        hashes: list[str] = []
        real_hash = security.hash_password

        async def counting_hash(password: str) -> str:
            hashes.append(password)
            return await real_hash(password)

        monkeypatch.setattr(security, "hash_password", counting_hash)
        return hashes

    return start_counting


# --- login ---------------------------------------------------------------------------------


async def test_owner_logs_in_while_other_addresses_hammer_the_account(
    start: Start, password_checks: list[str]
) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    answers: dict[str, list[int]] = {}
    for attacker in ATTACKERS:
        answers[attacker] = []
        for _ in range(LIMIT + 2):
            response = await server.login(email, WRONG, source=attacker)
            answers[attacker].append(response.status_code)
            if response.status_code == 429:
                assert_limited(response)
                break

    assert answers == {
        ATTACKERS[0]: [401] * LIMIT + [429],
        ATTACKERS[1]: [401] * LIMIT + [429],  # the email's budget is spent now
        ATTACKERS[2]: [401, 429],  # one guess, then it too has failed on this email
    }
    assert (await server.login(email, source=OWNER)).status_code == 200
    # The refused attempts never reached the password check: no Argon2, no database.
    assert len(password_checks) == 2 * LIMIT + 1 + 1


async def test_an_address_over_its_limit_is_refused_even_with_the_right_password(
    start: Start, password_checks: list[str]
) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    for _ in range(LIMIT):
        assert (await server.login(email, WRONG, source=ATTACKERS[0])).status_code == 401

    assert_limited(await server.login(email, source=ATTACKERS[0]))
    assert len(password_checks) == LIMIT
    assert (await server.login(email, source=OWNER)).status_code == 200


async def test_simultaneous_guesses_get_no_more_tries_than_sequential_ones(
    start: Start, password_checks: list[str]
) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    burst = [server.login(email, WRONG, source=ATTACKERS[0]) for _ in range(4 * LIMIT)]
    answers = sorted(response.status_code for response in await asyncio.gather(*burst))
    assert answers == [401] * LIMIT + [429] * (3 * LIMIT)
    assert len(password_checks) == LIMIT


async def test_a_successful_login_forgives_the_owners_typos(start: Start) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    for _ in range(2):
        for _ in range(LIMIT - 1):
            assert (await server.login(email, WRONG)).status_code == 401
        assert (await server.login(email)).status_code == 200


async def test_one_address_guessing_many_emails_is_limited(start: Start) -> None:
    server = await start()
    for n in range(CLIENT_BUDGET):
        guess = await server.login(f"victim-{n}@example.com", WRONG, source=ATTACKERS[0])
        assert guess.status_code == 401

    assert_limited(await server.login("another@example.com", WRONG, source=ATTACKERS[0]))
    assert (await server.login("another@example.com", WRONG, source=OWNER)).status_code == 401


async def test_the_admin_login_counts_apart_from_the_api(start: Start) -> None:
    server = await start()
    email = "root@example.com"
    await server.add_user(email, is_superuser=True)
    admin_form = {"data": {"username": email, "password": PASSWORD}}
    for _ in range(LIMIT):
        assert (await server.login(email, WRONG, source=ATTACKERS[0])).status_code == 401
    assert_limited(await server.login(email, source=ATTACKERS[0]))
    # Guesses at the API do not close the admin, even from the same address...
    assert (await server.post("/admin/login", ATTACKERS[0], **admin_form)).status_code == 302

    # ...and guesses at the admin are limited there, without touching the API's counters.
    wrong_form = {"data": {"username": email, "password": WRONG}}
    for _ in range(LIMIT):
        assert (await server.post("/admin/login", ATTACKERS[1], **wrong_form)).status_code == 400
    refused = await server.post("/admin/login", ATTACKERS[1], **admin_form)
    assert refused.status_code == 400
    assert "admin_session" not in refused.cookies
    assert (await server.login(email, source=ATTACKERS[1])).status_code == 200


# --- the other secrets: refresh tokens, email links, the current password ------------------


async def test_refresh_limits_failures_per_address_and_per_user(start: Start) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    stolen = (await server.login(email)).json()["refresh_token"]
    other_session = (await server.login(email)).json()["refresh_token"]
    assert (await server.post("/api/v1/auth/refresh", json={"refresh_token": stolen})).is_success

    def refresh(token: str, source: str) -> Awaitable[httpx.Response]:
        return server.post("/api/v1/auth/refresh", source, json={"refresh_token": token})

    # Tokens that belong to nobody count against the address.
    for n in range(LIMIT):
        assert (await refresh(f"made-up-{n}", ATTACKERS[0])).status_code == 401
    assert_limited(await refresh("made-up", ATTACKERS[0]))
    # A spent token of the user, replayed from two addresses, spends the user's budget.
    for _ in range(LIMIT):
        assert (await refresh(stolen, ATTACKERS[1])).status_code == 401
    assert_limited(await refresh(stolen, ATTACKERS[1]))
    assert (await refresh(stolen, ATTACKERS[2])).status_code == 401
    assert_limited(await refresh(stolen, ATTACKERS[2]))
    # The owner's other session, from the owner's address, still refreshes.
    assert (await refresh(other_session, OWNER)).status_code == 200


def _link(
    user: User, settings: Settings, purpose: str, ttl_s: int = 3600, bound_to: str | None = None
) -> str:
    if bound_to is None:
        bound_to = user.email if purpose == security.VERIFY_EMAIL else user.hashed_password
    return security.create_email_token(
        purpose=purpose,
        user_id=user.id,
        bound_to=bound_to,
        secret=settings.signing_key,
        ttl=timedelta(seconds=ttl_s),
    )


async def test_verify_limits_forged_and_expired_links(start: Start) -> None:
    server = await start()
    user = await server.add_user("owner@example.com")
    expired = _link(user, server.settings, security.VERIFY_EMAIL, ttl_s=-1)
    for token in ("forged", expired, expired):
        answer = await server.post("/api/v1/auth/verify", ATTACKERS[0], json={"token": token})
        assert answer.status_code == 400
    valid = {"json": {"token": _link(user, server.settings, security.VERIFY_EMAIL)}}
    assert_limited(await server.post("/api/v1/auth/verify", ATTACKERS[0], **valid))
    assert (await server.post("/api/v1/auth/verify", OWNER, **valid)).status_code == 200


async def test_verify_counts_a_users_stale_links_against_that_user_from_every_address(
    start: Start,
) -> None:
    server = await start()
    user = await server.add_user("owner@example.com")
    other = await server.add_user("other@example.com")

    def verify(token: str, source: str) -> Awaitable[httpx.Response]:
        return server.post("/api/v1/auth/verify", source, json={"token": token})

    # Signed links for the user, sent to an address the account no longer has.
    stale = _link(user, server.settings, security.VERIFY_EMAIL, bound_to="old@example.com")
    for _ in range(LIMIT):
        assert (await verify(stale, ATTACKERS[0])).status_code == 400
    # The user's budget is spent: another address gets one try, then it too has failed on them.
    assert (await verify(stale, ATTACKERS[1])).status_code == 400
    assert_limited(await verify(stale, ATTACKERS[1]))
    # That address is within its own limit: only this user is closed to it.
    other_stale = _link(other, server.settings, security.VERIFY_EMAIL, bound_to="old@example.com")
    assert (await verify(other_stale, ATTACKERS[1])).status_code == 400
    # The owner, with no failure on record, still confirms the address.
    valid = _link(user, server.settings, security.VERIFY_EMAIL)
    assert (await verify(valid, OWNER)).status_code == 200


async def test_reset_limits_spent_links_per_user_without_hashing_refused_passwords(
    start: Start, count_hashes: Callable[[], list[str]]
) -> None:
    server = await start()
    user = await server.add_user("owner@example.com")
    hashes = count_hashes()
    spent = _link(user, server.settings, security.RESET_PASSWORD)
    body = {"token": spent, "password": "the owner's new one"}
    assert (await server.post("/api/v1/auth/reset-password", OWNER, json=body)).status_code == 200

    forged = {"token": "forged", "password": "an attacker's guess"}
    for _ in range(LIMIT):
        answer = await server.post("/api/v1/auth/reset-password", ATTACKERS[0], json=forged)
        assert answer.status_code == 400
    assert_limited(await server.post("/api/v1/auth/reset-password", ATTACKERS[0], json=body))
    assert hashes == ["the owner's new one"]  # forged and refused links hash nothing
    for _ in range(LIMIT):
        answer = await server.post("/api/v1/auth/reset-password", ATTACKERS[1], json=body)
        assert answer.status_code == 400  # spent: counted against the owner's account
    assert_limited(await server.post("/api/v1/auth/reset-password", ATTACKERS[1], json=body))


async def test_the_verify_page_counts_in_the_apis_verify_limits(start: Start) -> None:
    server = await start()
    user = await server.add_user("owner@example.com")
    link = {"token": _link(user, server.settings, security.VERIFY_EMAIL)}
    forged = {"token": "forged"}
    # Failures at the API and at the page add up.
    assert (await server.post("/api/v1/auth/verify", ATTACKERS[0], json=forged)).status_code == 400
    for _ in range(LIMIT - 1):
        assert (await server.get("/verify-email", ATTACKERS[0], params=forged)).status_code == 400

    assert_limited_page(await server.get("/verify-email", ATTACKERS[0], params=link))
    assert_limited(await server.post("/api/v1/auth/verify", ATTACKERS[0], json=link))
    confirmed = await server.get("/verify-email", OWNER, params=link)
    assert confirmed.status_code == 200
    assert "owner@example.com is confirmed" in confirmed.text


async def test_the_reset_page_counts_in_the_apis_reset_limits_before_any_hashing(
    start: Start, count_hashes: Callable[[], list[str]]
) -> None:
    server = await start()
    user = await server.add_user("owner@example.com")
    hashes = count_hashes()
    link = _link(user, server.settings, security.RESET_PASSWORD)

    def reset(token: str, password: str, source: str) -> Awaitable[httpx.Response]:
        return server.post("/reset-password", source, data={"token": token, "password": password})

    for _ in range(LIMIT):
        assert (await reset("forged", "an attacker's guess", ATTACKERS[0])).status_code == 400
    assert_limited_page(await reset(link, "an attacker's guess", ATTACKERS[0]))
    assert hashes == []  # forged and refused links hash nothing
    assert (await reset(link, "the owner's new one", OWNER)).status_code == 200
    # The spent link, replayed from other addresses, spends the owner's budget.
    for _ in range(LIMIT):
        assert (await reset(link, "an attacker's guess", ATTACKERS[1])).status_code == 400
    assert (await reset(link, "an attacker's guess", ATTACKERS[2])).status_code == 400
    assert_limited_page(await reset(link, "an attacker's guess", ATTACKERS[2]))
    assert hashes == ["the owner's new one"]


async def test_wrong_current_passwords_are_limited_per_address_and_user(start: Start) -> None:
    server = await start()
    email = "owner@example.com"
    await server.add_user(email)
    stolen = (await server.login(email)).json()["access_token"]
    own = (await server.login(email)).json()["access_token"]

    def change(token: str, current: str, source: str) -> Awaitable[httpx.Response]:
        body = {"password": "a brand new password", "current_password": current}
        headers = {"Authorization": f"Bearer {token}"}
        return send(server.url, "PATCH", ME, source=source, json=body, headers=headers)

    for _ in range(LIMIT):
        assert (await change(stolen, WRONG, ATTACKERS[0])).status_code == 400
    assert_limited(await change(stolen, PASSWORD, ATTACKERS[0]))
    rename = {"json": {"name": "Renamed"}, "headers": {"Authorization": f"Bearer {own}"}}
    renamed = await send(server.url, "PATCH", ME, source=ATTACKERS[0], **rename)
    assert renamed.status_code == 200  # only password changes are limited
    assert (await change(own, PASSWORD, OWNER)).status_code == 200


# --- the client address ------------------------------------------------------------------


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(start: Start) -> None:
    proxy = "127.0.0.5"
    server = await start(forwarded_allow_ips=proxy)

    def forgot(source: str, forwarded_for: str) -> Awaitable[httpx.Response]:
        return server.post(
            "/api/v1/auth/forgot-password",
            source,
            json={"email": f"{uuid.uuid4().hex[:12]}@example.com"},
            headers={"X-Forwarded-For": forwarded_for},
        )

    # From an untrusted peer, a new X-Forwarded-For each time changes nothing: it is one client.
    for n in range(LIMIT):
        assert (await forgot(ATTACKERS[0], f"203.0.113.{n}")).status_code == 202
    assert_limited(await forgot(ATTACKERS[0], "203.0.113.99"))
    # From the proxy, each forwarded address is a client of its own...
    for n in range(LIMIT + 2):
        assert (await forgot(proxy, f"198.51.100.{n}")).status_code == 202
    # ...and is limited as one.
    for _ in range(LIMIT - 1):
        assert (await forgot(proxy, "198.51.100.0")).status_code == 202
    assert_limited(await forgot(proxy, "198.51.100.0"))
