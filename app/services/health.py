"""Readiness: can this process serve requests right now?"""

import asyncio

from sqlalchemy import text

from app.db.session import Database

CHECK_TIMEOUT_S = 2.0


async def check_database(db: Database) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; the reason goes to the operator
        return f"failed: {type(exc).__name__}"
    return "ok"


async def check_readiness(db: Database) -> dict[str, str]:
    return {"database": await check_database(db)}
