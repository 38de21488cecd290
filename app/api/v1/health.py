from fastapi import APIRouter, Response

from app.dependencies import ReadinessDep
from app.schemas.health import NOT_READY, Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> Liveness:
    """The process is up."""
    return Liveness()


@router.get("/ready", responses=NOT_READY)
async def ready(readiness: ReadinessDep, response: Response) -> Readiness:
    """The database answers and is migrated, and the broker answers when one is configured.

    Concurrent probes share one check, whose result is reused for about a second."""
    checks = await readiness.get()
    ok = all(result == "ok" for result in checks.values())
    response.status_code = 200 if ok else 503
    return Readiness(status="ok" if ok else "unavailable", checks=checks)
