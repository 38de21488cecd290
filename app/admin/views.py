"""The base of the admin's model views: the app's database, the selected rows, the way back."""

import types
import uuid
from typing import ClassVar, Self, cast

from sqladmin import Flash, ModelView
from starlette import status
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse

from app.db.session import Database


class DatabaseView(ModelView):
    db: ClassVar[Database]

    @classmethod
    def bound_to(cls, db: Database) -> type[Self]:
        """A subclass for one app. sqladmin keeps its Admin and engine on the view class, so
        two apps in one process (tests, an in-process server) must not share the class."""
        view = types.new_class(cls.__name__, (cls,), exec_body=lambda ns: ns.update(db=db))
        return cast(type[Self], view)

    def selected_ids(self, request: Request) -> list[uuid.UUID]:
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
