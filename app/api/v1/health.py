from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.dependencies import DatabaseDep, SettingsDep
from app.services import health

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A part is not ready; it is named"}})
async def ready(request: Request, db: DatabaseDep, settings: SettingsDep) -> JSONResponse:
    """The database answers and is migrated, and the broker answers when one is configured."""
    checks = await health.check_readiness(db, settings, head=request.app.state.head_revision)
    ok = all(result == "ok" for result in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
