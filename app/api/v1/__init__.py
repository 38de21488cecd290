from fastapi import APIRouter

from app.api.v1 import api_keys, auth, jobs, notifications, sessions, users
from app.schemas.errors import EVERY_REQUEST

router = APIRouter(prefix="/api/v1", responses=EVERY_REQUEST)
router.include_router(auth.router)
router.include_router(users.router)
router.include_router(sessions.router)
router.include_router(api_keys.router)
router.include_router(notifications.router)
router.include_router(jobs.router)
