from fastapi import APIRouter, Response

from app.core import metrics
from app.dependencies import JobStatsDep, ReadinessDep, metrics_token_required
from app.schemas.errors import NOT_AUTHENTICATED
from app.services import scrape

router = APIRouter(
    tags=["operations"], dependencies=[metrics_token_required], responses=NOT_AUTHENTICATED
)


@router.get("/metrics", response_class=Response)
async def read_metrics(job_stats: JobStatsDep, readiness: ReadinessDep) -> Response:
    """Prometheus text format: requests, the admission gate, the database pool, readiness, and
    the jobs (unfinished, lag, outbox backlog, recently dead, run times)."""
    body = await scrape.render(job_stats=job_stats, readiness=readiness)
    return Response(body, media_type=metrics.CONTENT_TYPE)
