"""Keys and claims: each use of SECRET_KEY signs with a key of its own (HKDF), and email links
say who issued them and what they are for."""

import hashlib
import hmac
import json
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from itsdangerous import TimestampSigner

from app.admin.auth import SESSION_COOKIE
from app.core import security
from app.core.config import Settings
from app.core.errors import InvalidEmailToken
from tests.conftest import MakeUser

SECRET = "test-secret-key-" + "x" * 32
PURPOSES = (
    security.ACCESS_TOKENS,
    security.EMAIL_LINKS,
    security.ADMIN_COOKIE,
    security.IDEMPOTENCY_FINGERPRINTS,
    security.PAGE_CURSORS,
)
RAW = "secret-key-itself"


def key_for(secret: str, purpose: str) -> str:
    """The key of `purpose`, or for RAW the service secret as it is."""
    return secret if purpose == RAW else security.purpose_key(secret, purpose)


def test_each_purpose_derives_a_key_of_its_own() -> None:
    keys = {security.purpose_key(SECRET, purpose) for purpose in PURPOSES}
    assert len(keys) == len(PURPOSES)
    assert SECRET not in keys
    assert security.purpose_key("another secret", security.EMAIL_LINKS) not in keys


# --- email links -----------------------------------------------------------------------------

USER_ID = uuid.uuid4()
BOUND_TO = "owner@example.com"


def link_claims(**changes: Any) -> dict[str, Any]:
    """The claims of a valid verification link; a change of None leaves that claim out."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "iss": security.ISSUER,
        "aud": security.EMAIL_LINK_AUDIENCE,
        "sub": str(USER_ID),
        "iat": now,
        "exp": now + timedelta(hours=1),
        "type": security.VERIFY_EMAIL,
        "bnd": security.binding(BOUND_TO),
    }
    return {name: value for name, value in (claims | changes).items() if value is not None}


def decode_link(token: str) -> tuple[uuid.UUID, str]:
    return security.decode_email_token(token, purpose=security.VERIFY_EMAIL, secret=SECRET)


def test_an_email_link_is_signed_with_the_links_key_and_names_its_issuer_and_audience() -> None:
    token = security.create_email_token(
        purpose=security.VERIFY_EMAIL,
        user_id=USER_ID,
        bound_to=BOUND_TO,
        secret=SECRET,
        ttl=timedelta(hours=1),
    )

    claims = jwt.decode(
        token,
        security.purpose_key(SECRET, security.EMAIL_LINKS),
        algorithms=[security.JWT_ALGORITHM],
        options={"verify_aud": False},
    )
    assert claims["iss"] == "accounts-service"
    assert claims["aud"] == "accounts-email-link"
    assert decode_link(token) == (USER_ID, security.binding(BOUND_TO))
    # The hand-made links below differ from this one in the one thing each test names.
    made = jwt.encode(link_claims(), security.purpose_key(SECRET, security.EMAIL_LINKS))
    assert decode_link(made) == (USER_ID, security.binding(BOUND_TO))


@pytest.mark.parametrize("purpose", [p for p in (RAW, *PURPOSES) if p != security.EMAIL_LINKS])
def test_an_email_link_signed_with_any_other_key_is_refused(purpose: str) -> None:
    token = jwt.encode(link_claims(), key_for(SECRET, purpose))

    with pytest.raises(InvalidEmailToken):
        decode_link(token)


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": None},
        {"aud": security.API_AUDIENCE},
        {"aud": "another-service"},
        {"iss": None},
        {"iss": "another-service"},
    ],
    ids=["no-audience", "api-audience", "other-audience", "no-issuer", "other-issuer"],
)
def test_an_email_link_without_its_audience_or_issuer_is_refused(changes: dict[str, Any]) -> None:
    token = jwt.encode(link_claims(**changes), security.purpose_key(SECRET, security.EMAIL_LINKS))

    with pytest.raises(InvalidEmailToken):
        decode_link(token)


# --- idempotency fingerprints ----------------------------------------------------------------


def test_idempotency_fingerprints_are_keyed_with_their_own_key() -> None:
    body = b'{"email":"owner@example.com","password":"correct horse battery","name":"Owner"}'

    def keyed_with(purpose: str) -> str:
        return hmac.new(key_for(SECRET, purpose).encode(), body, hashlib.sha256).hexdigest()

    fingerprint = security.fingerprint(body, secret=SECRET)

    assert fingerprint == keyed_with(security.IDEMPOTENCY_FINGERPRINTS)
    others = {keyed_with(p) for p in (RAW, *PURPOSES) if p != security.IDEMPOTENCY_FINGERPRINTS}
    assert fingerprint not in others


# --- the admin cookie ------------------------------------------------------------------------


async def admin_home_with_cookie(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, purpose: str
) -> httpx.Response:
    """/admin/ with a session cookie of a real superuser, signed as Starlette's sessions are,
    with the key of `purpose`."""
    root = await make_user(email="root@example.com", is_superuser=True, is_verified=True)
    data = b64encode(json.dumps({"user_id": str(root.id), "token_version": 0}).encode())
    cookie = TimestampSigner(key_for(settings.signing_key, purpose)).sign(data).decode()
    return await client.get("/admin/", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})


async def test_the_admin_takes_a_cookie_signed_with_the_admin_key(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    response = await admin_home_with_cookie(client, make_user, settings, security.ADMIN_COOKIE)

    assert response.status_code == 200


@pytest.mark.parametrize("purpose", [p for p in (RAW, *PURPOSES) if p != security.ADMIN_COOKIE])
async def test_the_admin_refuses_a_cookie_signed_with_any_other_key(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, purpose: str
) -> None:
    response = await admin_home_with_cookie(client, make_user, settings, purpose)

    assert response.status_code == 302
    assert response.headers["location"] == "http://testserver/admin/login"
