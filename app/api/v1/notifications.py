from fastapi import APIRouter, BackgroundTasks, status

from app.core import context
from app.dependencies import CurrentUser
from app.schemas.errors import NOT_AUTHENTICATED
from app.schemas.notifications import NotificationAccepted, NotificationCreate
from app.services import notifications

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=NOT_AUTHENTICATED)
async def create_notification(
    data: NotificationCreate, user: CurrentUser, background: BackgroundTasks
) -> NotificationAccepted:
    # Light, lossy-is-acceptable work after the response; anything that must happen is a job.
    background.add_task(
        notifications.log_notification,
        user_id=user.id,
        message=data.message,
        request_id=context.request_id.get(),
    )
    return NotificationAccepted()
