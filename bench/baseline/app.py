"""The ceiling: raw Starlette + an asyncpg pool + hand-written SQL, nothing else.

GET /users/{id} runs the SELECT the service's ORM issues for a user by primary key (every
column); POST /users inserts a user with a unique email, as registration does, minus Argon2.
Run: BENCH_DSN=postgresql://... uvicorn bench.baseline.app:app
"""

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # the ceiling is a little lower without it

    def dumps(value: Any) -> bytes:
        return json.dumps(value, default=str, separators=(",", ":")).encode()


SELECT_USER = (
    "SELECT users.id, users.email, users.name, users.hashed_password, users.is_active, "
    "users.is_verified, users.is_superuser, users.token_version, users.created_at, "
    "users.updated_at FROM users WHERE users.id = $1::UUID"
)
INSERT_USER = (
    "INSERT INTO users (id, email, name, hashed_password, is_active, is_verified, "
    "is_superuser, token_version, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, true, false, false, 0, $5, $5)"
)
# Registration stores an Argon2 hash; the ceiling stores one of the same length, unhashed.
PLACEHOLDER_HASH = "$argon2id$v=19$m=19456,t=2,p=1$" + "x" * 66


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "email": row["email"],
        "name": row["name"],
        "is_active": row["is_active"],
        "is_verified": row["is_verified"],
        "created_at": row["created_at"].isoformat(),
    }


def answer(body: dict[str, Any], status: int = 200) -> Response:
    return Response(dumps(body), status, media_type="application/json")


async def get_user(request: Request) -> Response:
    try:
        user_id = uuid.UUID(request.path_params["user_id"])
    except ValueError:
        return answer({"detail": "Not found"}, 404)
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as connection:
        row = await connection.fetchrow(SELECT_USER, user_id)
    if row is None:
        return answer({"detail": "User not found"}, 404)
    return answer(public(dict(row)))


async def create_user(request: Request) -> Response:
    data = json.loads(await request.body())
    email, name = data.get("email"), data.get("name")
    if not isinstance(email, str) or "@" not in email or not isinstance(name, str):
        return answer({"detail": "email and name are required"}, 422)
    now = datetime.now(UTC)
    row = {
        "id": uuid.uuid4(),
        "email": email.strip().lower(),
        "name": name,
        "is_active": True,
        "is_verified": False,
        "created_at": now,
    }
    pool: asyncpg.Pool = request.app.state.pool
    try:
        async with pool.acquire() as connection:
            await connection.execute(
                INSERT_USER, row["id"], row["email"], name, PLACEHOLDER_HASH, now
            )
    except asyncpg.UniqueViolationError:
        return answer({"detail": "Email already registered"}, 409)
    return answer(public(row), 201)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # The service's pool: DB_POOL_SIZE 10 + DB_MAX_OVERFLOW 10.
    app.state.pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=10, max_size=20)
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(
    routes=[
        Route("/users/{user_id}", get_user, methods=["GET"]),
        Route("/users", create_user, methods=["POST"]),
    ],
    lifespan=lifespan,
)
