from fastapi import APIRouter, Response

from app.core import metrics
from app.dependencies import ReadSessionDep
from app.services import jobs

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def read_metrics(session: ReadSessionDep) -> Response:
    """Prometheus text format: requests, database pool, jobs by status, job run times."""
    counts = await jobs.count_by_status(session)
    return Response(metrics.render(counts), media_type=metrics.CONTENT_TYPE)
