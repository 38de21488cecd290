"""Cross-site requests may not change anything through the admin (CSRF, login CSRF).

State-changing requests are the unsafe methods (the login form) and sqladmin's actions, which
are GET links (`/<model>/action/<name>`). For those, as the OWASP CSRF cheat sheet's Fetch
Metadata section and Go's `http.CrossOriginProtection` do:

- `Sec-Fetch-Site` (every current browser sends it) must be `same-origin`, or `none` (a URL
  the operator typed or bookmarked); `same-site` and `cross-site` are refused with 403, since
  a sibling subdomain is another party too.
- Without it (older browsers), `Origin`, when present, must be the admin's own origin.
- With neither header the request is not a browser's (curl, a script): no other site can
  have made it, so it passes.

The `SameSite=Strict` session cookie already stays home on cross-site requests; this refuses
them outright, including the login, which has no cookie yet.
"""

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


class SameOriginMiddleware:
    def __init__(self, app: ASGIApp, *, public_base_url: str) -> None:
        self.app = app
        self.public_origin = _origin(public_base_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _changes_state(scope) and not self._same_origin(scope):
            response = PlainTextResponse("Cross-site request refused", status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _same_origin(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None:
            return fetch_site.lower() in ALLOWED_FETCH_SITES
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        return origin.lower() in {own, self.public_origin}


def _changes_state(scope: Scope) -> bool:
    return scope["method"] not in SAFE_METHODS or "/action/" in scope["path"]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
