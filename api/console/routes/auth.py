"""Sign in with an API key that has the `admin` scope; sign out. `/console` itself leads to the orders."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from api.console.deps import (
    CSRF_FIELD,
    SIGN_IN_PATH,
    Action,
    ConsoleView,
    SessionDep,
    StateDep,
    StoreDep,
    audit_log,
    csrf_matches,
    is_secure,
)
from api.deps import ResourcesDep
from api.security import Scope

router = APIRouter(prefix="/console", include_in_schema=False)

HOME = "/console/orders"
log = logging.getLogger(__name__)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site: no open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


@router.get("")
async def console_home() -> Response:
    return RedirectResponse(HOME, status_code=HTTPStatus.SEE_OTHER)


@router.get("/sign-in")
async def sign_in_form(
    request: Request,
    state: StateDep,
    store: StoreDep,
    session: SessionDep,
    next_: Annotated[str | None, Query(alias="next", max_length=2_000)] = None,
) -> Response:
    # The sign-in form's CSRF token (login CSRF): the session's, or one in a cookie of its own.
    session = session or store.anonymous()
    view = ConsoleView(request, state, session, principal=None)
    response = view.render("sign_in.html", next=_safe_next(next_), error=None)
    if not session.signed_in:
        store.store(response, session, secure=is_secure(request))
    return response


@router.post("/sign-in")
async def sign_in(
    request: Request,
    state: StateDep,
    store: StoreDep,
    resources: ResourcesDep,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=200)],
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "",
    next_: Annotated[str | None, Form(alias="next", max_length=2_000)] = None,
) -> Response:
    target = _safe_next(next_)
    if session is None or not csrf_matches(session, csrf_token):
        audit_log.warning("console sign-in refused: no valid CSRF token")
        fresh = store.anonymous()
        view = ConsoleView(request, state, fresh, principal=None)
        response = view.render(
            "sign_in.html",
            status=HTTPStatus.FORBIDDEN,
            next=target,
            error="The form expired: sign in again.",
        )
        store.store(response, fresh, secure=is_secure(request))
        return response
    principal = resources.key_ring.authenticate(api_key)
    if principal is None or Scope.ADMIN not in principal.scopes:
        status = HTTPStatus.UNAUTHORIZED if principal is None else HTTPStatus.FORBIDDEN
        error = "This API key is not valid." if principal is None else "This key lacks the admin scope."
        audit_log.warning(
            "console sign-in refused: %s",
            "unknown key" if principal is None else f"{principal.name} not admin",
        )
        view = ConsoleView(request, state, session, principal=None)
        return view.render("sign_in.html", status=status, next=target, error=error)
    if session.signed_in:
        await store.revoke(session)  # signing in again, maybe as someone else: the old session ends
    signed_in = await store.open(principal.name)
    audit_log.info("console action sign-in by %s", principal.name)
    response = RedirectResponse(target, status_code=HTTPStatus.SEE_OTHER)
    store.store(response, signed_in, secure=is_secure(request))
    return response


@router.post("/sign-out")
async def sign_out(action: Action, store: StoreDep) -> Response:
    """Revoke the session in the database (its cookie, even copied, is refused from now on)."""
    await store.revoke(action.session)
    action.audit("sign-out")
    response = RedirectResponse(SIGN_IN_PATH, status_code=HTTPStatus.SEE_OTHER)
    store.clear(response, secure=is_secure(action.request))
    return response
