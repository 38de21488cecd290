"""Notification log lines, written by FastAPI BackgroundTasks after the response is sent."""

import logging
import uuid

logger = logging.getLogger(__name__)


async def log_notification(*, user_id: uuid.UUID, message: str, request_id: str | None) -> None:
    # Nobody awaits a background task: a failure is logged here rather than lost with it.
    try:
        logger.info("notification from user %s [request %s]: %r", user_id, request_id, message)
    except Exception:
        logger.exception("could not record the notification of user %s", user_id)
