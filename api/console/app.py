"""Mount the console on the API: its routers, its static assets, its templates, its error pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import cast
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRouter
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

from api.console.deps import (
    PAGE_HEADERS,
    SIGN_IN_PATH,
    ConsoleRefusal,
    ConsoleState,
    NavItem,
    SignInRequired,
    is_htmx,
)
from api.console.journey import format_ms
from api.console.routes import auth, dead_letters, health, orders, replays
from api.console.session import SessionStore
from api.problems import field_errors
from domain.money import format_amount
from infra.settings import Settings

HERE = Path(__file__).parent
STATIC_PATH = "/console/static"

# Every console router, and the navigation bar's entries in their order. A new page: add its router here
# and, if it belongs in the navigation, its entry (see the package docstring).
ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    orders.router,
    health.router,
    dead_letters.router,
    replays.router,
)
NAV: tuple[NavItem, ...] = (
    NavItem("Orders", "/console/orders"),
    NavItem("Health", "/console/health"),
    NavItem("Dead letters", "/console/dead-letters"),
    NavItem("Replays", "/console/replays"),
)

PREFIX = "/console"
Handler = Callable[[Request, Exception], Awaitable[Response]]
# A fragment that htmx polls is its page's path followed by this (`/console/health/live`): sent to sign
# in from a fragment, the operator comes back to its page.
FRAGMENT_SUFFIX = "/live"


def install_console(app: FastAPI, settings: Settings) -> None:
    """Serve the console under /console on `app` (no API key route: the console has its own session).

    Call after `api.problems.install_problem_handlers`: under /console, invalid input and HTTP errors
    (404, 405...) are answered with a console page instead of the REST API's problem documents.
    """
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["static"] = STATIC_PATH
    templates.env.filters.update(money=format_amount, when=_when, ms=format_ms)
    app.state.console = ConsoleState(
        session_lifetime=timedelta(minutes=settings.console_session_minutes),
        templates=templates,
        nav=NAV,
        temporal_ui_url=settings.temporal_ui_url.rstrip("/"),
        temporal_namespace=settings.temporal_namespace,
    )
    for router in ROUTERS:
        app.include_router(router, max_body_size=settings.api_max_body_bytes)
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(ConsoleRefusal, _refused)
    for error in (RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(error, _console_or(cast(Handler, app.exception_handlers[error])))


def _when(moment: datetime | None, precise: bool = False) -> str:
    """A timestamp in UTC, to the second (or the millisecond)."""
    if moment is None:
        return ""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else utc.strftime("%Y-%m-%d %H:%M:%S")


def return_to(request: Request) -> str:
    """The console page to come back to after signing in: for a fragment, the page that shows it (the
    page htmx says it is on, `HX-Current-URL`, else the fragment's path without `/live`)."""
    current = request.headers.get("HX-Current-URL") if is_htmx(request) else None
    if current:
        url = urlsplit(current)
        if url.netloc in ("", request.url.netloc) and url.path.startswith(f"{PREFIX}/"):
            return url.path + (f"?{url.query}" if url.query else "")
    path = request.url.path
    if path.endswith(FRAGMENT_SUFFIX):
        return path.removesuffix(FRAGMENT_SUFFIX)
    return path + (f"?{request.url.query}" if request.url.query else "")


async def _sign_in_required(request: Request, _: Exception) -> Response:
    location = f"{SIGN_IN_PATH}?next={quote(return_to(request), safe='')}"
    if is_htmx(request):
        # A polled fragment whose session ended: htmx follows HX-Redirect with a full page load.
        return Response(status_code=HTTPStatus.UNAUTHORIZED, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=HTTPStatus.SEE_OTHER, headers={"Cache-Control": "no-store"})


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleRefusal)
    return await _error_page(request, exc.status, [exc.detail], title="Refused")


def _console_or(api_handler: Handler) -> Handler:
    """Under /console, an error page of the console; elsewhere the API's own handler (a problem)."""

    async def handle(request: Request, exc: Exception) -> Response:
        if not (request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/")):
            return await api_handler(request, exc)
        if isinstance(exc, RequestValidationError):
            details = [f"{error.name}: {error.detail}" for error in field_errors(exc.errors())]
            return await _error_page(request, HTTPStatus.UNPROCESSABLE_ENTITY, details, title="Invalid input")
        assert isinstance(exc, StarletteHTTPException)
        status = HTTPStatus(exc.status_code)
        detail = "No such page." if status == HTTPStatus.NOT_FOUND else str(exc.detail)
        return await _error_page(request, status, [detail], title=status.phrase, headers=exc.headers)

    return handle


async def _error_page(
    request: Request,
    status: HTTPStatus,
    details: list[str],
    *,
    title: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A refusal or invalid input, in the layout (with the navigation when signed in), or the bare
    message for htmx to swap in where the operator acted."""
    state: ConsoleState = request.app.state.console
    try:
        session = await SessionStore(
            request.app.state.resources.database.sessions, state.session_lifetime
        ).read(request)
    except SQLAlchemyError:  # the database is down: the page without the navigation
        session = None
    signed_in = session is not None and session.signed_in
    return state.templates.TemplateResponse(
        request,
        "refused.html" if is_htmx(request) else "error.html",
        {
            "detail": "; ".join(details),
            "details": details,
            "status": int(status),
            "title": title,
            "operator": session.principal if signed_in and session else None,
            "csrf_token": session.csrf_token if session else "",
            "nav": state.nav,
            "current_path": request.url.path,
        },
        status_code=status,
        headers={**PAGE_HEADERS, **(headers or {})},
    )
