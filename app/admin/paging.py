"""The admin's list pages by keyset cursor, with the API's pagination kit.

sqladmin pages with OFFSET under a count of the list; here a page seeks after the last row of
the one before (the cursor in `?cursor=`), so a page costs the same at any depth and nothing
counts the table. Pages link to the next one and back to the first, not to numbered pages.
A cursor that does not check out (tampered, or made for another sort, filter or search, as the
sort links carry it along) gives the first page of the list as asked for now.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqladmin import ModelView
from sqladmin._types import SimpleColumnFilter
from sqladmin.pagination import Pagination
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload
from starlette import status
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app.core.errors import InvalidCursor
from app.services import pagination
from app.services.pagination import Ordering, PageParams

CURSOR = "cursor"
# Parameters that move along the list or size the page; the others (sort, filters, search)
# say which list it is, so a cursor is only valid for them.
NOT_SCOPE = frozenset({CURSOR, "page", "pageSize"})


@dataclass
class CursorPage(Pagination):
    """One page of rows and the links to the next and the first page, for cursor_pager.html."""

    cursor: str | None = None
    next_cursor: str | None = None
    next_url: str | None = None
    first_url: str | None = None

    def add_pagination_urls(self, base_url: URL) -> None:
        # sqladmin calls this with the request's URL before rendering.
        self.first_url = str(base_url.remove_query_params([CURSOR, "page"]))
        if self.next_cursor is not None:
            self.next_url = str(base_url.include_query_params(cursor=self.next_cursor))


def sort_choice(view: ModelView, request: Request) -> tuple[str, bool]:
    """The sort asked for (`sortBy`, `sort`), or the view's default: (column name, descending)."""
    sort_by = request.query_params.get("sortBy")
    if not sort_by:
        column, descending = view._get_default_sort()[0]  # every DatabaseView sets one
        return view._get_prop_name(column), bool(descending)
    if sort_by not in view._sort_fields:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid sortBy parameter")
    return sort_by, request.query_params.get("sort", "asc") == "desc"


async def list_page(
    view: ModelView, request: Request, ordering: Ordering, *, key: str
) -> CursorPage:
    """The page `?cursor=` names (the first without one) of the view's filtered, searched list;
    `key` signs and checks its cursors."""
    page_size = view.validate_page_number(request.query_params.get("pageSize"), view.page_size)
    page_size = min(page_size, max(view.page_size_options), pagination.MAX_LIMIT)
    if page_size < 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid page or pageSize parameter")
    query = view.list_query(request)
    for relation in view._list_relations:
        query = query.options(selectinload(relation))
    for column_filter in view.get_filters():
        value = request.query_params.get(column_filter.parameter_name)
        if value:  # the views' filters are all simple ones (no operator)
            simple = cast(SimpleColumnFilter, column_filter)
            query = await simple.get_filtered_query(query, value, view.model)
    search = request.query_params.get("search")
    if search:
        query = view.search_query(stmt=query, term=search)

    cursor = request.query_params.get(CURSOR) or None
    if cursor is not None and len(cursor) > pagination.MAX_CURSOR_CHARS:
        cursor = None
    scope = _scope(view, request, ordering)
    session_maker = cast(async_sessionmaker[AsyncSession], view.session_maker)
    async with session_maker(expire_on_commit=False) as session:
        try:
            rows, next_cursor = await _page(session, query, ordering, page_size, cursor, key, scope)
        except InvalidCursor:
            cursor = None
            rows, next_cursor = await _page(session, query, ordering, page_size, None, key, scope)
    return CursorPage(
        rows=rows,
        page=1,  # sqladmin redirects to `?page=` of this; there are no page numbers here
        page_size=page_size,
        count=len(rows),
        cursor=cursor,
        next_cursor=next_cursor,
    )


async def _page(
    session: AsyncSession,
    query: Any,
    ordering: Ordering,
    limit: int,
    cursor: str | None,
    key: str,
    scope: Sequence[str | None],
) -> tuple[list[Any], str | None]:
    params = PageParams(limit=limit, cursor=cursor, key=key)
    return await pagination.paginate(session, query, ordering=ordering, params=params, scope=scope)


def _scope(view: ModelView, request: Request, ordering: Ordering) -> list[str | None]:
    columns = [column.key for column in ordering.pinned + ordering.columns]
    asked = sorted(
        f"{name}={value}"
        for name, value in request.query_params.multi_items()
        if name not in NOT_SCOPE
    )
    return ["admin", view.identity, ",".join(columns), str(ordering.descending), *asked]
