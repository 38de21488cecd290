from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import DatabaseDep
from app.services import health

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A dependency is not ready"}})
async def ready(db: DatabaseDep) -> JSONResponse:
    checks = await health.check_readiness(db)
    ok = all(result == "ok" for result in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
