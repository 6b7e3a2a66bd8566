"""What every console route depends on: the signed-in operator, the CSRF check, rendering, the audit log.

- `Page` (GET): the operator must be signed in with a key that has the `admin` scope; otherwise a page
  redirects to the sign-in form (an htmx request gets 401 with `HX-Redirect` to it).
- `Action` (POST and any other state change): signed in with `admin` (else 401, or 403 without the
  scope), and the session's CSRF token sent back as the `csrf_token` form field or the `X-CSRF-Token`
  header (htmx sends the header: see `base.html`), else 403. `Action.audit(...)` logs the action with
  the principal.
- `OrdersPage`, `OrdersAction`: the same, and the scope the REST API needs for the same read or command
  (`api.security.Needs`: `orders:read`, `orders:write`), else 403 with a console page.
Both render templates with the operator, the CSRF token and the navigation filled in.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from api.console.session import ConsoleSession, SessionStore
from api.deps import ResourcesDep
from api.security import Needs, Principal, Scope

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_PATH = "/console/sign-in"
# Pages hold order data and a CSRF token: never cached, never framed, scripts from this origin only.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

audit_log = logging.getLogger("api.console.audit")


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str


@dataclass(frozen=True)
class ConsoleState:
    """Built by `api.console.install_console`, kept on `app.state.console`."""

    session_lifetime: timedelta
    templates: Jinja2Templates
    nav: tuple[NavItem, ...]
    temporal_ui_url: str
    temporal_namespace: str

    def workflow_url(self, workflow_id: str) -> str:
        """The workflow's page in the Temporal Web UI (`TEMPORAL_UI_URL`)."""
        return f"{self.temporal_ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"


class SignInRequired(Exception):
    """A page asked for without a valid signed-in session: answered with a redirect to sign in."""


class ConsoleRefusal(Exception):
    """An action refused (401 not signed in, 403 no `admin` scope or no valid CSRF token)."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def console_state(request: Request) -> ConsoleState:
    return cast(ConsoleState, request.app.state.console)


StateDep = Annotated[ConsoleState, Depends(console_state)]


def is_secure(request: Request) -> bool:
    """Served over https (directly, or behind a proxy whose forwarded headers uvicorn trusts)."""
    return request.url.scheme == "https"


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


async def session_store(state: StateDep, resources: ResourcesDep) -> SessionStore:
    return SessionStore(resources.database.sessions, state.session_lifetime)


StoreDep = Annotated[SessionStore, Depends(session_store)]


async def current_session(request: Request, store: StoreDep) -> ConsoleSession | None:
    return await store.read(request)


SessionDep = Annotated[ConsoleSession | None, Depends(current_session)]


@dataclass
class ConsoleView:
    """The request's renderer: templates get `request`, `operator`, `csrf_token`, `nav` and the context."""

    request: Request
    state: ConsoleState
    session: ConsoleSession
    principal: Principal | None
    headers: dict[str, str] = field(default_factory=lambda: dict(PAGE_HEADERS))

    def render(self, template: str, *, status: int = HTTPStatus.OK, **context: Any) -> Response:
        base: Mapping[str, Any] = {
            "operator": self.principal.name if self.principal else None,
            "csrf_token": self.session.csrf_token,
            "nav": self.state.nav,
            "current_path": self.request.url.path,
        }
        return self.state.templates.TemplateResponse(
            self.request, template, {**base, **context}, status_code=status, headers=self.headers
        )


def _operator(resources: ResourcesDep, session: ConsoleSession | None) -> Principal | None:
    """The session's principal if it is still configured with the `admin` scope (None if not signed in)."""
    if session is None or session.principal is None:
        return None
    principal = resources.key_ring.principal_named(session.principal)
    if principal is None or Needs.OPERATE not in principal.scopes:
        return None
    return principal


def _lacking(principal: Principal, needs: Scope | None) -> ConsoleRefusal | None:
    if needs is None or needs in principal.scopes:
        return None
    return ConsoleRefusal(HTTPStatus.FORBIDDEN, f"this needs the `{needs}` scope, as in the REST API")


def _page(needs: Scope | None) -> Callable[..., Awaitable[ConsoleView]]:
    async def page(
        request: Request, state: StateDep, resources: ResourcesDep, session: SessionDep
    ) -> ConsoleView:
        principal = _operator(resources, session)
        if principal is None or session is None:
            raise SignInRequired()
        if refusal := _lacking(principal, needs):
            raise refusal
        return ConsoleView(request, state, session, principal)

    return page


@dataclass
class ConsoleAction(ConsoleView):
    """A state-changing request that passed the session, scope and CSRF checks."""

    @property
    def operator(self) -> Principal:
        """Who acts (always known here: `Action` refuses a request without a signed-in admin)."""
        assert self.principal is not None
        return self.principal

    def audit(self, action: str, **details: object) -> None:
        """One audit record: who did what to what (INFO on the `api.console.audit` logger)."""
        described = " ".join(f"{key}={value}" for key, value in details.items())
        audit_log.info(
            "console action %s by %s%s",
            action,
            self.operator.name,
            f" ({described})" if described else "",
            # The record's own fields (the JSON format keeps the correlation ids: an order id given here).
            extra={"console_principal": self.operator.name, "console_action": action}
            | ({"order_id": str(details["order_id"])} if "order_id" in details else {}),
        )


async def presented_csrf_token(request: Request) -> str | None:
    """The CSRF token the request sent back: the `X-CSRF-Token` header, else the `csrf_token` form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def csrf_matches(session: ConsoleSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), session.csrf_token.encode())


def _action(needs: Scope | None) -> Callable[..., Awaitable[ConsoleAction]]:
    async def action(
        request: Request, state: StateDep, resources: ResourcesDep, session: SessionDep
    ) -> ConsoleAction:
        if session is None or session.principal is None:
            raise ConsoleRefusal(HTTPStatus.UNAUTHORIZED, "sign in to the console first")
        principal = _operator(resources, session)
        if principal is None:
            raise ConsoleRefusal(HTTPStatus.FORBIDDEN, "this key no longer has the `admin` scope")
        if refusal := _lacking(principal, needs):
            raise refusal
        if not csrf_matches(session, await presented_csrf_token(request)):
            audit_log.warning("console action refused: no valid CSRF token (principal %s)", principal.name)
            raise ConsoleRefusal(HTTPStatus.FORBIDDEN, "missing or invalid CSRF token: reload the page")
        return ConsoleAction(request, state, session, principal)

    return action


# Console access needs `admin`; the orders' pages and actions also need what their REST routes need.
Page = Annotated[ConsoleView, Depends(_page(None))]
Action = Annotated[ConsoleAction, Depends(_action(None))]
OrdersPage = Annotated[ConsoleView, Depends(_page(Needs.READ_ORDERS))]
OrdersAction = Annotated[ConsoleAction, Depends(_action(Needs.WRITE_ORDERS))]
