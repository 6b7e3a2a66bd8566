"""Mount the console on the API: its routers, its static assets, its templates and its session codec."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.routing import APIRouter
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
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
from api.console.session import SessionCodec
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

log = logging.getLogger(__name__)


def install_console(app: FastAPI, settings: Settings) -> None:
    """Serve the console under /console on `app` (no API key route: the console has its own session)."""
    secret = settings.console_session_secret
    if secret is None:
        log.info("CONSOLE_SESSION_SECRET is not set: console sessions last as long as this API process")
    codec = SessionCodec(
        secret.get_secret_value() if secret else secrets.token_urlsafe(32),
        settings.console_session_minutes * 60,
    )
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["static"] = STATIC_PATH
    templates.env.filters.update(money=format_amount, when=_when, ms=format_ms)
    app.state.console = ConsoleState(
        codec=codec,
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


def _when(moment: datetime | None, precise: bool = False) -> str:
    """A timestamp in UTC, to the second (or the millisecond)."""
    if moment is None:
        return ""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else utc.strftime("%Y-%m-%d %H:%M:%S")


async def _sign_in_required(request: Request, _: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{SIGN_IN_PATH}?next={quote(target, safe='')}"
    if is_htmx(request):
        # A polled fragment whose session ended: htmx follows HX-Redirect with a full page load.
        return Response(status_code=HTTPStatus.UNAUTHORIZED, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=HTTPStatus.SEE_OTHER, headers={"Cache-Control": "no-store"})


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleRefusal)
    state: ConsoleState = request.app.state.console
    return state.templates.TemplateResponse(
        request,
        "refused.html",
        {"detail": exc.detail, "status": int(exc.status)},
        status_code=exc.status,
        headers=PAGE_HEADERS,
    )
