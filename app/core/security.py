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
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, TypeVar

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.errors import AppError, InvalidEmailToken, InvalidToken

# OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane. Stored hashes made with other
# parameters are upgraded transparently at the next successful login.
password_hash = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),))

JWT_ALGORITHM = "HS256"
T = TypeVar("T")
ACCESS_TOKEN_TYPE = "access"


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


def create_access_token(
    *, user_id: uuid.UUID, token_version: int, secret: str, ttl: timedelta
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "type": ACCESS_TOKEN_TYPE,
        "ver": token_version,
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_access_token(token: str, *, secret: str) -> tuple[uuid.UUID, int]:
    """The user id and token version of a valid access token; InvalidToken otherwise."""
    user_id, token_version, expires_at = _verified_access_token(token, secret)
    if expires_at <= time.time():
        raise InvalidToken()
    return user_id, token_version


@lru_cache(maxsize=4096)
def _verified_access_token(token: str, secret: str) -> tuple[uuid.UUID, int, float]:
    """A client sends the same access token with every request until it expires: its signature
    and claims are checked once (a tenth of a small request's CPU) and remembered, expiry
    included, which the caller checks every time. Invalid tokens raise and are not remembered.
    """
    return _decode(
        token, secret=secret, kind=ACCESS_TOKEN_TYPE, claim="ver", as_=int, error=InvalidToken
    )


def _decode(
    token: str,
    *,
    secret: str,
    kind: str,
    claim: str,
    as_: Callable[[Any], T],
    error: type[AppError],
) -> tuple[uuid.UUID, T, float]:
    """The subject, `claim` and expiry of a signed, unexpired token of this kind; `error`
    otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "exp", "type", claim]},
        )
        if claims["type"] != kind:
            raise error()
        return uuid.UUID(claims["sub"]), as_(claims[claim]), float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        raise error() from exc


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def fingerprint(payload: bytes, *, secret: str) -> str:
    """A keyed digest of a request body; keyed, because the body may hold a password."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


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
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "type": purpose,
        "bnd": binding(bound_to),
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_email_token(token: str, *, purpose: str, secret: str) -> tuple[uuid.UUID, str]:
    """The user id and binding of a valid token for `purpose`; InvalidEmailToken otherwise."""
    user_id, bound_to, _ = _decode(
        token, secret=secret, kind=purpose, claim="bnd", as_=str, error=InvalidEmailToken
    )
    return user_id, bound_to
