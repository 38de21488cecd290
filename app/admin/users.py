"""Accounts in the admin: find them, deactivate or activate them, vouch for their address.

The password hash and the token version are never shown and never part of a form.
"""

from sqladmin import Flash, action
from sqladmin.authentication import get_current_user_id
from starlette.requests import Request
from starlette.responses import Response

from app.admin import paging
from app.admin.views import DatabaseView
from app.db.models import User
from app.services import users
from app.services.pagination import Ordering

# Each sort's keyset columns, ending in a unique one.
LIST_ORDERS = {"email": (User.email,), "created_at": (User.created_at, User.id)}


class UserAdmin(DatabaseView, model=User):
    icon = "fa-solid fa-user"
    column_list = (
        User.email,
        User.name,
        User.is_active,
        User.is_verified,
        User.is_superuser,
        User.created_at,
    )
    column_details_list = (User.id, *column_list, User.updated_at)
    column_searchable_list = (User.email, User.name)
    # Only orders an index holds, so a page seeks in the index instead of sorting the whole
    # table (users have no index on name): the unique email, or ix_users_created_at_id.
    column_sortable_list = (User.email, User.created_at)
    column_default_sort = (User.created_at, True)
    # Never in a form, should editing ever be switched on.
    form_excluded_columns = (User.hashed_password, User.token_version)

    def list_ordering(self, request: Request) -> Ordering:
        sort_by, descending = paging.sort_choice(self, request)
        return Ordering(LIST_ORDERS[sort_by], descending=descending)

    @action(
        name="deactivate",
        label="Deactivate",
        confirmation_message="Deactivate the selected users and end all their sessions?",
    )
    async def deactivate(self, request: Request) -> Response:
        user_ids = self.selected_ids(request)
        if not user_ids:
            return self.back_to_list(request, nothing_selected=True)
        me = get_current_user_id(request)
        if any(str(user_id) == me for user_id in user_ids):
            # An admin who deactivated themselves would be locked out mid-click.
            Flash.warning(request, "You cannot deactivate your own account.")
            user_ids = [user_id for user_id in user_ids if str(user_id) != me]
        async with self.db.transaction() as session:
            changed = await users.set_active(session, user_ids=user_ids, active=False)
        Flash.success(request, f"Deactivated {_users(len(changed))}; their sessions are ended.")
        return self.back_to_list(request)

    @action(name="activate", label="Activate")
    async def activate(self, request: Request) -> Response:
        user_ids = self.selected_ids(request)
        if not user_ids:
            return self.back_to_list(request, nothing_selected=True)
        async with self.db.transaction() as session:
            changed = await users.set_active(session, user_ids=user_ids, active=True)
        Flash.success(request, f"Activated {_users(len(changed))}.")
        return self.back_to_list(request)

    @action(name="mark-verified", label="Mark verified")
    async def mark_verified(self, request: Request) -> Response:
        user_ids = self.selected_ids(request)
        if not user_ids:
            return self.back_to_list(request, nothing_selected=True)
        async with self.db.transaction() as session:
            changed = await users.mark_verified(session, user_ids=user_ids)
        Flash.success(request, f"Marked {_users(len(changed))} verified.")
        return self.back_to_list(request)


def _users(count: int) -> str:
    return f"{count} user" if count == 1 else f"{count} users"
