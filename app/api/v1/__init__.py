from fastapi import APIRouter

from app.api.v1 import auth, jobs, notifications, users

router = APIRouter(prefix="/api/v1")
router.include_router(auth.router)
router.include_router(users.router)
router.include_router(notifications.router)
router.include_router(jobs.router)
