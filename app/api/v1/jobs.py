import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.db.models import Job, JobStatus
from app.dependencies import MAX_OFFSET, ReadSessionDep, SessionDep, SuperUser
from app.schemas.jobs import JobPage, JobRead
from app.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobPage)
async def list_jobs(
    _: SuperUser,
    session: ReadSessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    items, total = await jobs.list_page(session, status=status, limit=limit, offset=offset)
    return JobPage(items=[JobRead.model_validate(job) for job in items], total=total)


@router.get("/{job_id}", response_model=JobRead)
async def read_job(job_id: uuid.UUID, _: SuperUser, session: ReadSessionDep) -> Job:
    return await jobs.get(session, job_id)


@router.post("/{job_id}/retry", response_model=JobRead)
async def retry_job(job_id: uuid.UUID, _: SuperUser, session: SessionDep) -> Job:
    return await jobs.retry(session, job_id)
