import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.db.models import Job, JobStatus
from app.dependencies import PaginationQuery, SessionDep, SuperUser
from app.schemas.errors import (
    FORBIDDEN,
    INVALID_CURSOR,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    NOT_RETRYABLE,
)
from app.schemas.jobs import JobRead
from app.schemas.pagination import Page
from app.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=NOT_AUTHENTICATED | FORBIDDEN)


@router.get("", response_model=Page[JobRead], responses=INVALID_CURSOR)
async def list_jobs(
    _: SuperUser,
    session: SessionDep,
    page: PaginationQuery,
    status: JobStatus | None = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[JobRead]:
    items, next_cursor = await jobs.list_jobs(session, status=status, name=name, page=page)
    return Page[JobRead](items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead, responses=NOT_FOUND)
async def read_job(job_id: uuid.UUID, _: SuperUser, session: SessionDep) -> Job:
    return await jobs.get(session, job_id)


@router.post("/{job_id}/retry", response_model=JobRead, responses=NOT_FOUND | NOT_RETRYABLE)
async def retry_job(job_id: uuid.UUID, _: SuperUser, session: SessionDep) -> Job:
    return await jobs.retry(session, job_id)
