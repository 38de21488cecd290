"""Durable jobs in the admin: read-only, filtered by status, failed and dead ones retried."""

from dataclasses import replace

from sqladmin import Flash, action
from sqladmin.filters import StaticValuesFilter
from starlette.requests import Request
from starlette.responses import Response

from app.admin import paging
from app.admin.views import DatabaseView
from app.core.errors import JobNotRetryable, NotFound
from app.db.models import Job, JobStatus
from app.services import jobs
from app.services.pagination import Ordering

LIST_ERROR_CHARS = 80  # a traceback in full belongs on the job's page, not in the table


class JobAdmin(DatabaseView, model=Job):
    icon = "fa-solid fa-gears"
    column_list = (
        Job.id,
        Job.name,
        Job.status,
        Job.attempts,
        Job.max_attempts,
        Job.last_error,
        Job.run_at,
        Job.updated_at,
        Job.created_at,
    )
    column_filters = (
        StaticValuesFilter(Job.status, [(status.value, status.value) for status in JobStatus]),
    )
    # Only the order an index holds (ix_jobs_created_at_id, and ix_jobs_status_created_at_id
    # under the status filter: the API's jobs.list_order), so a page never sorts the table.
    column_sortable_list = (Job.created_at,)
    column_default_sort = (Job.created_at, True)
    # A ClassVar of ModelView; ruff cannot see that through the base class.
    column_formatters = {Job.last_error: lambda job, _: _shorten(job.last_error)}  # noqa: RUF012

    def list_ordering(self, request: Request) -> Ordering:
        _, descending = paging.sort_choice(self, request)
        try:
            status = JobStatus(request.query_params.get("status", ""))
        except ValueError:
            status = None  # no filter, or one that matches no job
        return replace(jobs.list_order(status=status, name=None), descending=descending)

    @action(name="retry", label="Retry")
    async def retry(self, request: Request) -> Response:
        job_ids = self.selected_ids(request)
        if not job_ids:
            return self.back_to_list(request, nothing_selected=True)
        retried = refused = 0
        async with self.db.transaction() as session:
            for job_id in sorted(job_ids):  # one lock order for every operator
                try:
                    await jobs.retry(session, job_id)
                except (JobNotRetryable, NotFound):  # raised before anything was changed
                    refused += 1
                else:
                    retried += 1
        if retried:
            Flash.success(request, f"Queued {_jobs(retried)} to run again.")
        if refused:
            Flash.warning(
                request, f"Not retried: {_jobs(refused)}; only failed or dead jobs can be."
            )
        return self.back_to_list(request)


def _shorten(error: str | None) -> str:
    text = error or ""
    return text if len(text) <= LIST_ERROR_CHARS else text[: LIST_ERROR_CHARS - 1] + "…"


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"
