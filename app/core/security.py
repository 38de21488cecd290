"""Password hashing, access tokens (JWT) and opaque refresh tokens.

Argon2 is CPU-bound for tens of milliseconds, so the async helpers run it on worker threads;
argon2-cffi releases the GIL while hashing, so the event loop keeps serving meanwhile.
"""

import asyncio
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.errors import AppError, InvalidEmailToken, InvalidToken

# OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane. Stored hashes made with other
# parameters are upgraded transparently at the next successful login.
password_hash = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),))

JWT_ALGORITHM = "HS256"
T = TypeVar("T")
ACCESS_TOKEN_TYPE = "access"
# Who signs the tokens and who they are for: a token made for another use, or by another
# service sharing a key by mistake, is refused.
ISSUER = "accounts-service"
API_AUDIENCE = "accounts-api"
EMAIL_LINK_AUDIENCE = "accounts-email-link"

# Each use of SECRET_KEY signs with a key of its own, derived from it (HKDF, RFC 5869): what
# one use leaks or signs can never be replayed as another.
ACCESS_TOKENS = "access-tokens"
EMAIL_LINKS = "email-links"
ADMIN_COOKIE = "admin-cookie"
IDEMPOTENCY_FINGERPRINTS = "idempotency-fingerprints"
PAGE_CURSORS = "page-cursors"


@cache
def purpose_key(secret: str, purpose: str) -> str:
    """The key for one use of the service secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(secret.encode()).hex()


# Argon2 runs on a pool of its own, one thread per core: a burst of sign-ups queues here
# instead of oversubscribing the CPU and starving the event loop (and memory: 19 MiB each).
_hashing = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="argon2")


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hashing, fn, *args)


async def hash_password(password: str) -> str:
    return await _off_loop(password_hash.hash, password)


async def verify_password(password: str, hashed: str) -> tuple[bool, str | None]:
    """Whether the password matches, and a fresh hash when the stored one is outdated."""
    return await _off_loop(password_hash.verify_and_update, password, hashed)


@cache
def _decoy_hash() -> str:
    return password_hash.hash(secrets.token_urlsafe(16))


def _check_against_decoy(password: str) -> None:
    password_hash.verify(password, _decoy_hash())


async def burn_password_check(password: str) -> None:
    """Spend the time of a real check, so an unknown email answers as slowly as a known one."""
    await _off_loop(_check_against_decoy, password)


def _sign(
    *, key: str, audience: str, kind: str, user_id: uuid.UUID, ttl: timedelta, **claims: Any
) -> str:
    now = datetime.now(UTC)
    registered = {"iss": ISSUER, "aud": audience, "sub": str(user_id), "iat": now, "exp": now + ttl}
    return jwt.encode({**registered, "type": kind, **claims}, key, algorithm=JWT_ALGORITHM)


def create_access_token(
    *, user_id: uuid.UUID, session_id: uuid.UUID, token_version: int, secret: str, ttl: timedelta
) -> str:
    return _sign(
        key=purpose_key(secret, ACCESS_TOKENS),
        audience=API_AUDIENCE,
        kind=ACCESS_TOKEN_TYPE,
        user_id=user_id,
        ttl=ttl,
        sid=str(session_id),
        ver=token_version,
    )


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    token_version: int
    expires_at: float


def decode_access_token(token: str, *, secret: str) -> AccessClaims:
    """The claims of a valid, unexpired access token; InvalidToken otherwise."""
    claims = _verified_access_token(token, secret)
    if claims.expires_at <= time.time():
        raise InvalidToken()
    return claims


@lru_cache(maxsize=4096)
def _verified_access_token(token: str, secret: str) -> AccessClaims:
    """A client sends the same access token with every request until it expires: its signature
    and claims are checked once (a tenth of a small request's CPU) and remembered, expiry
    included, which the caller checks every time. Invalid tokens raise and are not remembered.
    """
    claims = _decode(
        token,
        key=purpose_key(secret, ACCESS_TOKENS),
        kind=ACCESS_TOKEN_TYPE,
        audience=API_AUDIENCE,
        required=("sid", "ver"),
        error=InvalidToken,
    )
    try:
        return AccessClaims(
            uuid.UUID(claims["sub"]),
            uuid.UUID(claims["sid"]),
            int(claims["ver"]),
            float(claims["exp"]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidToken() from exc


def _decode(
    token: str,
    *,
    key: str,
    kind: str,
    audience: str,
    required: tuple[str, ...],
    error: type[AppError],
) -> dict[str, Any]:
    """The claims of a signed, unexpired token of this kind and audience; `error` otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            issuer=ISSUER,
            audience=audience,
            options={"require": ["iss", "aud", "sub", "exp", "type", *required]},
        )
    except jwt.PyJWTError as exc:
        raise error() from exc
    if claims["type"] != kind:
        raise error()
    return claims


# API keys start with this, so a leaked one is easy to recognise (and to scan for).
API_KEY_PREFIX = "ak_"


def new_token() -> str:
    """An opaque secret: a refresh token, or the body of an API key."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Opaque secrets are stored as SHA-256: they carry 256 random bits, so no salt or slow
    hash is needed, and a leaked table cannot be replayed."""
    return hashlib.sha256(token.encode()).hexdigest()


def fingerprint(payload: bytes, *, secret: str) -> str:
    """A keyed digest of a request body; keyed, because the body may hold a password."""
    key = purpose_key(secret, IDEMPOTENCY_FINGERPRINTS).encode()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


# Links in emails carry a signed, expiring token bound to the state it acts on: a verification
# token to the address it was sent to, a reset token to the password hash it replaces, so a
# reset link stops working the moment any password change happens (it works once).
VERIFY_EMAIL = "verify-email"
RESET_PASSWORD = "reset-password"


def binding(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def create_email_token(
    *, purpose: str, user_id: uuid.UUID, bound_to: str, secret: str, ttl: timedelta
) -> str:
    return _sign(
        key=purpose_key(secret, EMAIL_LINKS),
        audience=EMAIL_LINK_AUDIENCE,
        kind=purpose,
        user_id=user_id,
        ttl=ttl,
        bnd=binding(bound_to),
    )


def decode_email_token(token: str, *, purpose: str, secret: str) -> tuple[uuid.UUID, str]:
    """The user id and binding of a valid token for `purpose`; InvalidEmailToken otherwise."""
    claims = _decode(
        token,
        key=purpose_key(secret, EMAIL_LINKS),
        kind=purpose,
        audience=EMAIL_LINK_AUDIENCE,
        required=("bnd",),
        error=InvalidEmailToken,
    )
    try:
        return uuid.UUID(claims["sub"]), str(claims["bnd"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidEmailToken() from exc
