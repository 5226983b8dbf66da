"""The dashboard's web application (Starlette): the page, its static files, one JSON endpoint.

Read-only by construction: every route is GET (HEAD), and the database is opened afresh with
``Store.open_read_only`` for each snapshot, in a worker thread so the event loop never waits on
SQLite. A fresh connection per request also means a dashboard started before the orchestrator
(or across its restarts) sees the writer's WAL as soon as it exists.

When a token is set, every request must carry it: ``?token=`` in the URL (the page then keeps
it in an HttpOnly cookie), an ``Authorization: Bearer`` header, or that cookie. Without one the
server only answers requests addressed to a loopback host name (no DNS rebinding).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fedge.protocol.errors import FedgeError

from ..store import Store
from .snapshot import build_snapshot

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "fedge_dashboard_token"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The page loads nothing from elsewhere (uPlot is vendored) and runs no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token may be in the URL
    "Cache-Control": "no-store",
}


def _given_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE) or ""


class TokenGuard(BaseHTTPMiddleware):
    """401 for every request without the right token; remembers a URL token in a cookie."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self._token = token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not hmac.compare_digest(_given_token(request).encode(), self._token):
            return PlainTextResponse(
                "401 Unauthorized: this dashboard needs its token; open the URL that "
                "`fedge dashboard` printed (it ends in ?token=...)\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="fedge dashboard"'},
            )
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, self._token.decode(), httponly=True, samesite="strict")
        return response


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


def _read(database: Path, run_id: str | None) -> dict[str, Any]:
    store = Store.open_read_only(database)
    try:
        return build_snapshot(store, run_id)
    finally:
        store.close()


def create_app(
    database: str | Path,
    *,
    token: str | None = None,
    run_id: str | None = None,
    poll_seconds: float = 2.0,
) -> Starlette:
    """The dashboard of ``database``. ``token``: required on every request (None: loopback
    host names only). ``poll_seconds``: how often the page asks for a new snapshot."""
    db = Path(database)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def api_snapshot(request: Request) -> Response:
        try:
            data = await run_in_threadpool(_read, db, run_id)
        except FedgeError as exc:  # e.g. the file is gone or damaged: say so on the page
            return JSONResponse({"error": str(exc)}, status_code=503)
        data["poll_seconds"] = poll_seconds
        return JSONResponse(data)

    middleware = [Middleware(SecurityHeaders)]
    if token:
        middleware.append(Middleware(TokenGuard, token=token))
    else:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/snapshot", api_snapshot, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware)
