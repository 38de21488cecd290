"""The base of the admin's model views: the app's database, lists by cursor, the selected rows,
the way back."""

import builtins
import types
import uuid
from typing import ClassVar, Self, cast

from sqladmin import Flash, ModelView
from sqladmin.pagination import Pagination
from starlette import status
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse

from app.admin import paging
from app.admin.templates import CURSOR_LIST
from app.db.session import Database
from app.services.pagination import Ordering


class DatabaseView(ModelView):
    db: ClassVar[Database]
    page_key: ClassVar[str]
    # Operators look and act through the views' actions; nothing is created, edited or
    # deleted by hand.
    can_create = False
    can_edit = False
    can_delete = False
    can_export = False

    list_template = CURSOR_LIST

    def list_ordering(self, request: Request) -> Ordering:
        """The keyset order of the list as asked for (sort, filters): one an index holds."""
        raise NotImplementedError

    async def list(self, request: Request) -> Pagination:
        """A page by cursor (app/admin/paging.py) in place of sqladmin's count and OFFSET."""
        return await paging.list_page(self, request, self.list_ordering(request), key=self.page_key)

    @classmethod
    def bound_to(cls, db: Database, *, page_key: str) -> type[Self]:
        """A subclass for one app. sqladmin keeps its Admin and engine on the view class, so
        two apps in one process (tests, an in-process server) must not share the class.
        `page_key` signs the list's cursors (PAGE_CURSORS, as the API's)."""
        body = {"db": db, "page_key": page_key}
        view = types.new_class(cls.__name__, (cls,), exec_body=lambda ns: ns.update(body))
        return cast(type[Self], view)

    def selected_ids(self, request: Request) -> builtins.list[uuid.UUID]:
        """The rows an action was asked for: the `pks` query parameter, comma separated."""
        try:
            return [uuid.UUID(pk) for pk in request.query_params.get("pks", "").split(",") if pk]
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid selection") from None

    def back_to_list(self, request: Request, *, nothing_selected: bool = False) -> RedirectResponse:
        if nothing_selected:
            Flash.warning(request, f"Select at least one {self.name.lower()} first.")
        url = request.url_for("admin:list", identity=self.identity)
        return RedirectResponse(url, status_code=status.HTTP_302_FOUND)
