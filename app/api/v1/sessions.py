import uuid

from fastapi import APIRouter, status

from app.dependencies import LoginUser, PaginationQuery, SessionDep
from app.schemas.errors import INVALID_CURSOR, LOGIN_SESSION_REQUIRED, NOT_AUTHENTICATED, NOT_FOUND
from app.schemas.pagination import Page
from app.schemas.sessions import SessionRead
from app.services import sessions

router = APIRouter(
    prefix="/users/me/sessions",
    tags=["sessions"],
    responses=NOT_AUTHENTICATED | LOGIN_SESSION_REQUIRED,
)


@router.get("", response_model=Page[SessionRead], responses=INVALID_CURSOR)
async def list_sessions(
    user: LoginUser, session: SessionDep, page: PaginationQuery
) -> Page[SessionRead]:
    """The caller's live sessions, newest first, the one of this request marked `current`."""
    live, next_cursor = await sessions.list_live(session, user_id=user.id, page=page)
    return Page[SessionRead](
        items=[
            SessionRead.model_validate(s).model_copy(update={"current": s.id == user.session_id})
            for s in live
        ],
        next_cursor=next_cursor,
    )


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def end_session(session_id: uuid.UUID, user: LoginUser, session: SessionDep) -> None:
    """End a session (a lost phone, say): its refresh and access tokens stop at once."""
    await sessions.end_session(session, user_id=user.id, session_id=session_id)
