"""Personal API keys in the admin: see who has which, when each was last used, revoke them.

Secrets are never stored, so there is nothing secret to show; the hash is not shown either.
"""

from sqladmin import Flash, action
from starlette.requests import Request
from starlette.responses import Response

from app.admin import paging
from app.admin.views import DatabaseView
from app.db.models import ApiKey
from app.services import api_keys
from app.services.pagination import Ordering


class ApiKeyAdmin(DatabaseView, model=ApiKey):
    name = "API key"
    name_plural = "API keys"
    icon = "fa-solid fa-key"
    column_list = (
        ApiKey.name,
        ApiKey.prefix,
        ApiKey.user_id,
        ApiKey.created_at,
        ApiKey.last_used_at,
        ApiKey.expires_at,
        ApiKey.revoked_at,
    )
    column_details_list = (ApiKey.id, *column_list)
    column_searchable_list = (ApiKey.name, ApiKey.prefix)
    # A keyset needs a total order: last_used_at (NULL until first use) is none.
    column_sortable_list = (ApiKey.created_at,)
    column_default_sort = (ApiKey.created_at, True)
    form_excluded_columns = (ApiKey.key_hash,)

    def list_ordering(self, request: Request) -> Ordering:
        _, descending = paging.sort_choice(self, request)
        return Ordering((ApiKey.created_at, ApiKey.id), descending=descending)

    @action(
        name="revoke",
        label="Revoke",
        confirmation_message="Revoke the selected keys? Whatever uses them stops at once.",
    )
    async def revoke(self, request: Request) -> Response:
        key_ids = self.selected_ids(request)
        if not key_ids:
            return self.back_to_list(request, nothing_selected=True)
        async with self.db.transaction() as session:
            revoked = await api_keys.revoke_many(session, key_ids=key_ids)
        Flash.success(request, f"Revoked {revoked} key(s).")
        return self.back_to_list(request)
