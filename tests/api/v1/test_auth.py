"""The auth API: registration, idempotent retries, login, refresh-token rotation and logout."""

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, func, select, update

from app.core import security
from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import IdempotencyKey, Job, RefreshToken, User
from app.db.session import Database
from app.services import tasks, users
from tests.conftest import PASSWORD, MakeUser, bearer, login

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/users/me"

NEW_PASSWORD = "a brand new passphrase"
# The configured argon2id parameters (OWASP minimum), as they appear in an encoded hash.
CURRENT_ARGON2 = "m=19456,t=2,p=1"
USER_FIELDS = {"id", "email", "name", "is_active", "is_verified", "created_at"}
BAD_CREDENTIALS = "Incorrect email or password"


# --- helpers ------------------------------------------------------------------------------


def database(app: FastAPI) -> Database:
    db: Database = app.state.db
    return db


def user_body(email: str = "ada@example.com", **overrides: Any) -> dict[str, Any]:
    return {"email": email, "name": "Ada Lovelace", "password": PASSWORD} | overrides


async def register(
    client: httpx.AsyncClient, body: dict[str, Any], *, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(REGISTER, json=body, headers=headers)


async def request_token(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post(TOKEN, data={"username": email, "password": password})


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": refresh_token})


async def logout(
    client: httpx.AsyncClient, tokens: dict[str, Any], refresh_token: str
) -> httpx.Response:
    return await client.post(LOGOUT, json={"refresh_token": refresh_token}, headers=bearer(tokens))


async def count_users(app: FastAPI, email: str | None = None) -> int:
    query = select(func.count()).select_from(User)
    if email is not None:
        query = query.where(User.email_matches(email))
    async with database(app).transaction() as session:
        return await session.scalar(query) or 0


async def welcome_emails_enqueued(app: FastAPI) -> int:
    query = select(func.count()).select_from(Job).where(Job.name == tasks.send_welcome_email.name)
    async with database(app).transaction() as session:
        return await session.scalar(query) or 0


async def stored_user(app: FastAPI, email: str) -> User:
    async with database(app).transaction() as session:
        user = await users.get_by_email(session, email)
    assert user is not None, f"no user with email {email!r}"
    return user


async def refresh_tokens_of(app: FastAPI, user_id: uuid.UUID) -> list[RefreshToken]:
    async with database(app).transaction() as session:
        tokens = await session.scalars(select(RefreshToken).where(RefreshToken.user_id == user_id))
        return list(tokens)


async def set_user_fields(app: FastAPI, user_id: uuid.UUID, **values: Any) -> None:
    async with database(app).transaction() as session:
        await session.execute(update(User).where(User.id == user_id).values(**values))


def argon2_parameters(hashed: str | bytes) -> str:
    """The cost parameters of an encoded Argon2 hash, e.g. "m=19456,t=2,p=1"."""
    text = hashed.decode() if isinstance(hashed, bytes) else hashed
    return text.split("$")[3]


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def access_claims(
    user: User, session_id: uuid.UUID | None = None, **overrides: Any
) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims = {
        "iss": security.ISSUER,
        "aud": security.API_AUDIENCE,
        "sid": str(session_id or uuid.uuid4()),
        "sub": str(user.id),
        "type": "access",
        "ver": user.token_version,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    return claims | overrides


def session_id_of(tokens: dict[str, Any]) -> uuid.UUID:
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return uuid.UUID(claims["sid"])


# --- POST /auth/register --------------------------------------------------------------------


async def test_register_returns_201_with_the_public_user_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await register(client, user_body("ada@example.com", name="Ada"))

    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == USER_FIELDS
    assert uuid.UUID(user["id"])
    assert user["email"] == "ada@example.com"
    assert user["name"] == "Ada"
    assert user["is_active"] is True
    assert user["is_verified"] is False
    assert datetime.fromisoformat(user["created_at"]).tzinfo is not None


async def test_register_never_returns_the_password_or_its_hash(
    client: httpx.AsyncClient,
) -> None:
    response = await register(client, user_body())

    assert response.status_code == 201, response.text
    assert "hashed_password" not in response.json()
    assert "argon2" not in response.text
    assert PASSWORD not in response.text


async def test_register_stores_an_argon2id_hash_with_the_configured_parameters(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await register(client, user_body("ada@example.com"))

    user = await stored_user(app, "ada@example.com")
    assert user.hashed_password.startswith("$argon2id$")
    assert argon2_parameters(user.hashed_password) == CURRENT_ARGON2


async def test_register_strips_whitespace_around_the_name(client: httpx.AsyncClient) -> None:
    response = await register(client, user_body(name="  Ada Lovelace \t"))

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Ada Lovelace"


async def test_register_accepts_a_name_in_any_script(client: httpx.AsyncClient) -> None:
    response = await register(client, user_body(name="Zoë Łukasiewicz 李"))

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Zoë Łukasiewicz 李"


@pytest.mark.parametrize("length", [8, 128])
async def test_register_accepts_passwords_at_the_length_limits(
    client: httpx.AsyncClient, length: int
) -> None:
    response = await register(client, user_body(password="p" * length))

    assert response.status_code == 201, response.text


async def test_register_rejects_taken_email(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user(email="ada@example.com")

    response = await register(client, user_body("ada@example.com"))

    assert response.status_code == 409
    assert response.json() == {"detail": "A user with this email already exists"}


@pytest.mark.parametrize("email", ["ADA@EXAMPLE.COM", "Ada@Example.com", "aDa@example.COM"])
async def test_register_rejects_taken_email_in_other_case(
    client: httpx.AsyncClient, make_user: MakeUser, email: str
) -> None:
    await make_user(email="ada@example.com")

    response = await register(client, user_body(email))

    assert response.status_code == 409


async def test_register_rejects_taken_non_ascii_email_in_other_case(
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    await make_user(email="Åsa@example.com")

    response = await register(client, user_body("åsa@example.com"))

    assert response.status_code == 409


async def test_register_conflict_leaves_the_existing_account_untouched(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    existing = await make_user(email="ada@example.com", name="The Original")

    response = await register(
        client, user_body("ADA@example.com", name="Impostor", password="another password")
    )

    assert response.status_code == 409
    assert await count_users(app) == 1
    user = await stored_user(app, "ada@example.com")
    assert (user.id, user.name, user.hashed_password) == (
        existing.id,
        "The Original",
        existing.hashed_password,
    )


async def test_register_conflict_enqueues_no_welcome_email(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    await make_user(email="ada@example.com")
    enqueued_before = await welcome_emails_enqueued(app)

    response = await register(client, user_body("ADA@example.com"))

    assert response.status_code == 409
    assert await welcome_emails_enqueued(app) == enqueued_before


INVALID_REGISTRATIONS = [
    pytest.param({"email": "not-an-email"}, "email", id="email-without-at"),
    pytest.param({"email": "ada@"}, "email", id="email-without-domain"),
    pytest.param({"email": "ada lovelace@example.com"}, "email", id="email-with-space"),
    pytest.param({"email": ""}, "email", id="email-empty"),
    pytest.param(
        {"email": "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com"},
        "email",
        id="email-over-254-chars",
    ),
    pytest.param({"email": 42}, "email", id="email-not-a-string"),
    pytest.param({"password": "p" * 7}, "password", id="password-7-chars"),
    pytest.param({"password": ""}, "password", id="password-empty"),
    pytest.param({"password": "p" * 129}, "password", id="password-129-chars"),
    pytest.param({"password": 12345678}, "password", id="password-not-a-string"),
    pytest.param({"name": ""}, "name", id="name-empty"),
    pytest.param({"name": "   \t "}, "name", id="name-whitespace"),
    pytest.param({"name": "n" * 101}, "name", id="name-101-chars"),
    pytest.param({"name": "Ada\x00Lovelace"}, "name", id="name-nul"),
    pytest.param({"name": "Ada\nLovelace"}, "name", id="name-newline"),
    pytest.param({"name": "Ada\rLovelace"}, "name", id="name-carriage-return"),
    pytest.param({"name": "Ada\x1b[31mLovelace"}, "name", id="name-escape"),
    pytest.param({"name": "Ada\x7fLovelace"}, "name", id="name-del"),
    pytest.param({"name": "Ada\x85Lovelace"}, "name", id="name-c1-next-line"),
    pytest.param({"name": "Ada\x9b31mLovelace"}, "name", id="name-c1-csi"),
    pytest.param({"is_superuser": True}, "is_superuser", id="unknown-field"),
    pytest.param({"email": None}, "email", id="email-null"),
]
MISSING_FIELDS = [
    pytest.param(field, id=f"missing-{field}") for field in ("email", "name", "password")
]


@pytest.mark.parametrize(("overrides", "field"), INVALID_REGISTRATIONS)
async def test_register_rejects_invalid_input(
    client: httpx.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    response = await register(client, user_body(**overrides))

    assert response.status_code == 422, response.text
    assert ["body", field] in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize("field", MISSING_FIELDS)
async def test_register_rejects_a_missing_field(client: httpx.AsyncClient, field: str) -> None:
    body = user_body()
    del body[field]

    response = await register(client, body)

    assert response.status_code == 422
    assert ["body", field] in [error["loc"] for error in response.json()["detail"]]


async def test_register_rejects_a_body_that_is_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, content=b"email=ada@example.com", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422


@pytest.mark.parametrize(("overrides", "field"), INVALID_REGISTRATIONS)
async def test_rejected_registration_leaves_no_user(
    client: httpx.AsyncClient, app: FastAPI, overrides: dict[str, Any], field: str
) -> None:
    response = await register(client, user_body(**overrides))

    assert response.status_code == 422
    assert await count_users(app) == 0


# --- concurrent registration ------------------------------------------------------------------


async def test_concurrent_registrations_of_one_email_create_exactly_one_user(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    spellings = ["ada@example.com", "ADA@example.com", "Ada@Example.com", "aDA@EXAMPLE.COM"]
    bodies = [user_body(spellings[i % len(spellings)], name=f"Ada {i}") for i in range(16)]

    responses = await asyncio.gather(*(register(client, body) for body in bodies))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 15, [r.text for r in responses if r.status_code >= 500]
    assert await count_users(app, "ada@example.com") == 1
    assert await count_users(app) == 1


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_register_replays_the_first_response_for_a_repeated_idempotency_key(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first = await register(client, user_body(), key="signup-1")
    retry = await register(client, user_body(), key="signup-1")

    assert (first.status_code, retry.status_code) == (201, 201), retry.text
    assert retry.json() == first.json()
    assert await count_users(app) == 1


async def test_register_replay_enqueues_no_second_welcome_email(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await register(client, user_body(), key="signup-1")

    retry = await register(client, user_body(), key="signup-1")

    assert retry.status_code == 201
    assert await welcome_emails_enqueued(app) == 1


async def test_register_rejects_an_idempotency_key_reused_with_another_body(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await register(client, user_body("ada@example.com"), key="signup-1")

    response = await register(client, user_body("grace@example.com"), key="signup-1")

    assert response.status_code == 409
    assert response.json() == {
        "detail": "This Idempotency-Key was used with a different request body"
    }
    assert await count_users(app, "grace@example.com") == 0


async def test_register_treats_another_password_as_another_body(
    client: httpx.AsyncClient,
) -> None:
    await register(client, user_body(), key="signup-1")

    response = await register(client, user_body(password="another password"), key="signup-1")

    assert response.status_code == 409


async def test_register_with_a_new_idempotency_key_for_a_taken_email_is_409(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await register(client, user_body(), key="signup-1")

    response = await register(client, user_body(), key="signup-2")

    assert response.status_code == 409
    assert await count_users(app) == 1


async def test_concurrent_requests_with_one_idempotency_key_create_one_user(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    responses = await asyncio.gather(
        *(register(client, user_body(), key="signup-1") for _ in range(5))
    )

    assert [response.status_code for response in responses] == [201] * 5, [
        response.text for response in responses
    ]
    assert len({response.json()["id"] for response in responses}) == 1
    assert await count_users(app) == 1


async def test_concurrent_requests_with_one_idempotency_key_and_other_bodies_create_one_user(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    bodies = [user_body(f"user{i}@example.com") for i in range(5)]

    responses = await asyncio.gather(*(register(client, body, key="signup-1") for body in bodies))

    assert sorted(response.status_code for response in responses) == [201] + [409] * 4
    assert await count_users(app) == 1


async def test_failed_registration_stores_no_idempotency_record(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    await make_user(email="ada@example.com")

    response = await register(client, user_body("ada@example.com"), key="signup-1")

    assert response.status_code == 409
    async with database(app).transaction() as session:
        assert await session.get(IdempotencyKey, "signup-1") is None


async def test_idempotency_key_of_a_failed_registration_can_be_retried_with_a_fixed_body(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    # The failure is not replayed and does not bind the key: the client corrects the email and
    # retries under the same key, as a form that resubmits with its original key would.
    await make_user(email="ada@example.com")
    failed = await register(client, user_body("ada@example.com"), key="signup-1")

    retry = await register(client, user_body("ada.lovelace@example.com"), key="signup-1")

    assert failed.status_code == 409
    assert retry.status_code == 201, retry.text
    assert await count_users(app, "ada.lovelace@example.com") == 1


async def test_idempotency_key_of_a_failed_registration_is_not_replayed(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(email="ada@example.com")
    await register(client, user_body("ada@example.com"), key="signup-1")

    retry = await register(client, user_body("ada@example.com"), key="signup-1")

    assert retry.status_code == 409


async def test_expired_idempotency_key_can_be_used_for_another_body(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    await register(client, user_body("ada@example.com"), key="signup-1")
    async with database(app).transaction() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "signup-1")
            .values(created_at=utcnow() - settings.idempotency_key_ttl - timedelta(minutes=1))
        )

    response = await register(client, user_body("grace@example.com"), key="signup-1")

    assert response.status_code == 201, response.text
    assert response.json()["email"] == "grace@example.com"


async def test_register_accepts_an_idempotency_key_of_255_printable_characters(
    client: httpx.AsyncClient,
) -> None:
    key = "".join(chr(0x21 + i % 94) for i in range(255))

    response = await register(client, user_body(), key=key)

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"k" * 256, id="256-chars"),
        pytest.param(b"signup 1", id="space"),
        pytest.param("clé-1".encode(), id="non-ascii"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_register_rejects_a_malformed_idempotency_key(
    client: httpx.AsyncClient, app: FastAPI, key: bytes
) -> None:
    response = await client.post(REGISTER, json=user_body(), headers={b"Idempotency-Key": key})

    assert response.status_code == 422, response.text
    assert ["header", "idempotency-key"] in [error["loc"] for error in response.json()["detail"]]
    assert await count_users(app) == 0


# --- POST /auth/token ---------------------------------------------------------------------


async def test_token_returns_a_bearer_token_pair(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()

    response = await request_token(client, user.email)

    assert response.status_code == 200, response.text
    tokens = response.json()
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == settings.access_token_expire_minutes * 60
    assert tokens["access_token"] != tokens["refresh_token"]


async def test_token_access_token_authenticates_the_user(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    me = await client.get(ME, headers=bearer(tokens))

    assert me.status_code == 200, me.text
    assert me.json()["id"] == str(user.id)


@pytest.mark.parametrize("spelling", ["ADA@EXAMPLE.COM", "ada@example.com", "aDa@ExAmPlE.cOm"])
async def test_token_matches_the_email_in_any_case(
    client: httpx.AsyncClient, make_user: MakeUser, spelling: str
) -> None:
    await make_user(email="Ada@Example.com")

    response = await request_token(client, spelling)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("spelling", ["Åsa@example.com", "åsa@example.com", "ÅSA@EXAMPLE.COM"])
async def test_token_matches_a_non_ascii_email_in_any_case(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    spelling: str,
) -> None:
    await make_user(email="Åsa@example.com")

    response = await request_token(client, spelling)

    assert response.status_code == 200, response.text


async def test_token_rejects_a_wrong_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()

    response = await request_token(client, user.email, "wrong password")

    assert response.status_code == 401
    assert response.json() == {"detail": BAD_CREDENTIALS}
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_token_answers_an_unknown_email_like_a_wrong_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()

    wrong_password = await request_token(client, user.email, "wrong password")
    unknown_email = await request_token(client, "nobody@example.com")

    assert unknown_email.status_code == wrong_password.status_code == 401
    assert unknown_email.json() == wrong_password.json() == {"detail": BAD_CREDENTIALS}
    assert unknown_email.headers["WWW-Authenticate"] == "Bearer"


async def test_token_spends_the_same_argon2_work_on_an_unknown_email(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    verified: list[str] = []
    original_verify = Argon2Hasher.verify

    def counting_verify(self: Argon2Hasher, password: str | bytes, hashed: str | bytes) -> bool:
        verified.append(argon2_parameters(hashed))
        return original_verify(self, password, hashed)

    monkeypatch.setattr(Argon2Hasher, "verify", counting_verify)

    await request_token(client, user.email, "wrong password")
    known_email_checks = list(verified)
    verified.clear()
    await request_token(client, "nobody@example.com", "wrong password")

    assert known_email_checks == [CURRENT_ARGON2]
    assert verified == known_email_checks


async def test_token_rejects_an_inactive_user(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user(is_active=False)

    response = await request_token(client, user.email)

    assert response.status_code == 401
    assert response.json() == {"detail": "This account is disabled"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await refresh_tokens_of(app, user.id) == []


async def test_token_does_not_reveal_an_inactive_user_to_a_wrong_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(is_active=False)

    response = await request_token(client, user.email, "wrong password")

    assert response.status_code == 401
    assert response.json() == {"detail": BAD_CREDENTIALS}


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"username": "ada@example.com"}, id="no-password"),
        pytest.param({"password": PASSWORD}, id="no-username"),
        pytest.param(
            {
                "username": "ada@example.com",
                "password": PASSWORD,
                "grant_type": "client_credentials",
            },
            id="wrong-grant-type",
        ),
    ],
)
async def test_token_rejects_an_incomplete_or_invalid_form(
    client: httpx.AsyncClient, make_user: MakeUser, form: dict[str, str]
) -> None:
    await make_user(email="ada@example.com")

    response = await client.post(TOKEN, data=form)

    assert response.status_code == 422, response.text


async def test_token_rejects_credentials_sent_as_json(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(email="ada@example.com")

    response = await client.post(TOKEN, json={"username": "ada@example.com", "password": PASSWORD})

    assert response.status_code == 422


async def test_token_upgrades_a_hash_with_outdated_parameters(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    weak = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
    old_hash = await asyncio.to_thread(weak.hash, PASSWORD)
    assert argon2_parameters(old_hash) == "m=8192,t=1,p=1"
    await set_user_fields(app, user.id, hashed_password=old_hash)

    response = await request_token(client, user.email)

    assert response.status_code == 200, response.text
    new_hash = (await stored_user(app, user.email)).hashed_password
    assert argon2_parameters(new_hash) == CURRENT_ARGON2
    assert await asyncio.to_thread(security.password_hash.verify, PASSWORD, new_hash)


async def test_token_keeps_an_outdated_hash_on_a_wrong_password(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    weak = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
    old_hash = await asyncio.to_thread(weak.hash, PASSWORD)
    await set_user_fields(app, user.id, hashed_password=old_hash)

    response = await request_token(client, user.email, "wrong password")

    assert response.status_code == 401
    assert (await stored_user(app, user.email)).hashed_password == old_hash


async def test_token_leaves_a_current_hash_unchanged(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()

    await login(client, user.email)

    assert (await stored_user(app, user.email)).hashed_password == user.hashed_password


# --- POST /auth/refresh -------------------------------------------------------------------


async def test_refresh_returns_a_new_pair_with_a_rotated_refresh_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    response = await refresh(client, tokens["refresh_token"])

    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["token_type"] == "bearer"
    assert rotated["refresh_token"] != tokens["refresh_token"]


async def test_refreshed_access_token_authenticates_the_user(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    rotated = (await refresh(client, tokens["refresh_token"])).json()

    me = await client.get(ME, headers=bearer(rotated))

    assert me.status_code == 200, me.text
    assert me.json()["id"] == str(user.id)


async def test_rotated_refresh_token_can_be_refreshed_again(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    rotated = (await refresh(client, tokens["refresh_token"])).json()

    response = await refresh(client, rotated["refresh_token"])

    assert response.status_code == 200, response.text


async def test_refresh_rejects_a_refresh_token_used_twice(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    await refresh(client, tokens["refresh_token"])

    reused = await refresh(client, tokens["refresh_token"])

    assert reused.status_code == 401
    assert reused.headers["WWW-Authenticate"] == "Bearer"


async def test_reusing_a_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    rotated = (await refresh(client, tokens["refresh_token"])).json()
    newest = (await refresh(client, rotated["refresh_token"])).json()

    reused = await refresh(client, tokens["refresh_token"])

    assert reused.status_code == 401
    assert (await refresh(client, newest["refresh_token"])).status_code == 401
    assert all(token.revoked_at is not None for token in await refresh_tokens_of(app, user.id))


async def test_reusing_a_refresh_token_leaves_other_sessions_alone(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    stolen = await login(client, user.email)
    other_device = await login(client, user.email)
    await refresh(client, stolen["refresh_token"])

    await refresh(client, stolen["refresh_token"])

    assert (await refresh(client, other_device["refresh_token"])).status_code == 200


async def test_refresh_rejects_an_unknown_token(client: httpx.AsyncClient) -> None:
    response = await refresh(client, "not-a-token-we-issued")

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or expired token"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_refresh_rejects_an_expired_token(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    async with database(app).transaction() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    response = await refresh(client, tokens["refresh_token"])

    assert response.status_code == 401


async def test_refresh_rejects_the_token_of_a_deactivated_user(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    await set_user_fields(app, user.id, is_active=False)

    response = await refresh(client, tokens["refresh_token"])

    assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"refresh_token": "abc", "user_id": "x"}, id="extra-field"),
        pytest.param({}, id="missing-token"),
        pytest.param({"refresh_token": ""}, id="empty-token"),
        pytest.param({"refresh_token": "t" * 513}, id="token-over-512-chars"),
        pytest.param({"refresh_token": 42}, id="token-not-a-string"),
    ],
)
async def test_refresh_rejects_an_invalid_body(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post(REFRESH, json=body)

    assert response.status_code == 422


@pytest.mark.parametrize("concurrency", [2, 5])
async def test_concurrent_refreshes_with_one_token_let_at_most_one_succeed(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, concurrency: int
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    responses = await asyncio.gather(
        *(refresh(client, tokens["refresh_token"]) for _ in range(concurrency))
    )

    statuses = [response.status_code for response in responses]
    assert statuses.count(200) <= 1
    assert statuses.count(401) == concurrency - statuses.count(200), statuses
    assert all(token.revoked_at is not None for token in await refresh_tokens_of(app, user.id))


async def test_concurrent_refreshes_with_one_token_revoke_the_winners_new_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    responses = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(2)))

    winners = [response.json() for response in responses if response.status_code == 200]
    assert len(winners) == 1, [response.status_code for response in responses]
    assert (await refresh(client, winners[0]["refresh_token"])).status_code == 401


# --- POST /auth/logout --------------------------------------------------------------------


async def test_logout_returns_204_and_ends_the_refresh_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    response = await logout(client, tokens, tokens["refresh_token"])

    assert response.status_code == 204
    assert response.content == b""
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401


async def test_logout_ends_the_rotated_tokens_of_the_session(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    rotated = (await refresh(client, tokens["refresh_token"])).json()

    await logout(client, rotated, rotated["refresh_token"])

    assert (await refresh(client, rotated["refresh_token"])).status_code == 401


async def test_logout_leaves_the_users_other_sessions_alone(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    laptop = await login(client, user.email)
    phone = await login(client, user.email)

    await logout(client, laptop, laptop["refresh_token"])

    assert (await refresh(client, phone["refresh_token"])).status_code == 200


async def test_logout_requires_a_bearer_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)

    response = await client.post(LOGOUT, json={"refresh_token": tokens["refresh_token"]})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_logout_does_not_revoke_another_users_refresh_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    mallory = await login(client, (await make_user()).email)
    victim = await login(client, (await make_user()).email)

    response = await logout(client, mallory, victim["refresh_token"])

    assert response.status_code == 204
    assert (await refresh(client, victim["refresh_token"])).status_code == 200


async def test_logout_accepts_an_unknown_refresh_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)

    response = await logout(client, tokens, "not-a-token-we-issued")

    assert response.status_code == 204


async def test_logout_rejects_an_invalid_body(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)

    response = await client.post(
        LOGOUT,
        json={"refresh_token": tokens["refresh_token"], "everywhere": True},
        headers=bearer(tokens),
    )

    assert response.status_code == 422
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


# --- access tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer garbage", id="garbage"),
        pytest.param("Bearer a.b.c", id="three-garbage-segments"),
        pytest.param("Bearer ", id="empty"),
        pytest.param("Basic YWRhOnB3", id="basic-scheme"),
    ],
)
async def test_protected_route_rejects_a_malformed_authorization(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get(ME, headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_protected_route_rejects_a_token_with_a_forged_payload(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    victim = await make_user()
    tokens = await login(client, (await make_user()).email)
    header, _, signature = tokens["access_token"].split(".")
    forged = f"{header}.{b64url(access_claims(victim, iat=0, exp=4102444800))}"

    response = await client.get(ME, headers={"Authorization": f"Bearer {forged}.{signature}"})

    assert response.status_code == 401


async def test_protected_route_rejects_a_token_with_an_altered_signature(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)
    token = tokens["access_token"]
    middle = token.rindex(".") + 10
    altered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]

    response = await client.get(ME, headers={"Authorization": f"Bearer {altered}"})

    assert response.status_code == 401


async def test_protected_route_rejects_an_unsigned_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    unsigned = jwt.encode(access_claims(user), "", algorithm="none")

    response = await client.get(ME, headers={"Authorization": f"Bearer {unsigned}"})

    assert response.status_code == 401


async def test_protected_route_rejects_a_token_signed_with_another_secret(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    token = security.create_access_token(
        user_id=user.id,
        session_id=session_id_of(tokens),
        token_version=user.token_version,
        secret="another-secret-key-" + "y" * 32,
        ttl=timedelta(minutes=5),
    )

    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


async def test_protected_route_rejects_an_expired_access_token(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    token = security.create_access_token(
        user_id=user.id,
        session_id=session_id_of(tokens),
        token_version=user.token_version,
        secret=settings.signing_key,
        ttl=timedelta(minutes=-1),
    )

    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or expired token"}


async def test_an_access_token_that_worked_is_refused_once_it_expires(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verified tokens are remembered to spare the signature check, never past their expiry."""
    user = await make_user()
    tokens = await login(client, user.email)
    token = security.create_access_token(
        user_id=user.id,
        session_id=session_id_of(tokens),
        token_version=user.token_version,
        secret=settings.signing_key,
        ttl=timedelta(minutes=5),
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get(ME, headers=headers)).status_code == 200
    assert (await client.get(ME, headers=headers)).status_code == 200

    later = time.time() + 301
    monkeypatch.setattr(time, "time", lambda: later)
    response = await client.get(ME, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or expired token"}


async def test_protected_route_rejects_a_refresh_token_as_bearer(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await login(client, (await make_user()).email)

    response = await client.get(ME, headers={"Authorization": f"Bearer {tokens['refresh_token']}"})

    assert response.status_code == 401


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"type": "refresh"}, id="other-type"),
        pytest.param({"type": None}, id="no-type"),
        pytest.param({"ver": None}, id="no-version"),
        pytest.param({"ver": "abc"}, id="non-numeric-version"),
        pytest.param({"sub": "not-a-uuid"}, id="non-uuid-subject"),
        pytest.param({"sub": None}, id="no-subject"),
        pytest.param({"exp": None}, id="no-expiry"),
        pytest.param({"sid": None}, id="no-session"),
        pytest.param({"sid": "not-a-uuid"}, id="non-uuid-session"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"iss": "someone-else"}, id="other-issuer"),
        pytest.param({"aud": None}, id="no-audience"),
        pytest.param({"aud": security.EMAIL_LINK_AUDIENCE}, id="other-audience"),
    ],
)
async def test_protected_route_rejects_a_correctly_signed_token_with_bad_claims(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, claims: dict[str, Any]
) -> None:
    user = await make_user()
    sid = session_id_of(await login(client, user.email))
    valid = access_claims(user, sid)
    key = security.purpose_key(settings.signing_key, security.ACCESS_TOKENS)
    good = jwt.encode(valid, key, algorithm="HS256")
    assert (await client.get(ME, headers={"Authorization": f"Bearer {good}"})).status_code == 200
    payload = {name: value for name, value in (valid | claims).items() if value is not None}
    token = jwt.encode(payload, key, algorithm="HS256")

    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


async def test_protected_route_rejects_a_token_signed_with_the_underived_secret_key(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    """Each use of SECRET_KEY has a key of its own: the secret itself signs nothing."""
    user = await make_user()
    claims = access_claims(user, session_id_of(await login(client, user.email)))
    token = jwt.encode(claims, settings.signing_key, algorithm="HS256")

    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


async def test_protected_route_rejects_the_token_of_a_deleted_user(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    async with database(app).transaction() as session:
        await session.execute(delete(User).where(User.id == user.id))

    response = await client.get(ME, headers=bearer(tokens))

    assert response.status_code == 401


async def test_protected_route_rejects_the_token_of_a_deactivated_user(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    await set_user_fields(app, user.id, is_active=False)

    response = await client.get(ME, headers=bearer(tokens))

    assert response.status_code == 401


async def test_password_change_invalidates_existing_access_tokens(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    other_session = await login(client, user.email)
    tokens = await login(client, user.email)

    changed = await client.patch(
        ME, json={"current_password": PASSWORD, "password": NEW_PASSWORD}, headers=bearer(tokens)
    )

    assert changed.status_code == 200, changed.text
    assert (await client.get(ME, headers=bearer(tokens))).status_code == 401
    assert (await client.get(ME, headers=bearer(other_session))).status_code == 401


async def test_password_change_revokes_existing_refresh_tokens(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    other_session = await login(client, user.email)
    tokens = await login(client, user.email)

    changed = await client.patch(
        ME, json={"current_password": PASSWORD, "password": NEW_PASSWORD}, headers=bearer(tokens)
    )

    assert changed.status_code == 200, changed.text
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    assert (await refresh(client, other_session["refresh_token"])).status_code == 401


async def test_password_change_lets_only_the_new_password_log_in(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = await login(client, user.email)
    await client.patch(
        ME, json={"current_password": PASSWORD, "password": NEW_PASSWORD}, headers=bearer(tokens)
    )

    old = await request_token(client, user.email, PASSWORD)
    new = await request_token(client, user.email, NEW_PASSWORD)

    assert (old.status_code, new.status_code) == (401, 200)
    assert (await client.get(ME, headers=bearer(new.json()))).status_code == 200


async def test_token_with_a_nul_byte_in_the_email_is_401_not_a_server_error(
    client: httpx.AsyncClient,
) -> None:
    """PostgreSQL text cannot hold NUL: such an email must never reach a query."""
    response = await client.post(
        "/api/v1/auth/token", data={"username": "ada\x00@example.com", "password": PASSWORD}
    )
    assert response.status_code == 401
