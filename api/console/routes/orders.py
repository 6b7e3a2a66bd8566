"""Orders: search (id, customer, status, placement time; keyset pages), one order's page with its journey,
and cancel, through the same query and command code as the REST API (`api.queries`, `api.commands`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, Path, Query
from pydantic import BeforeValidator
from starlette.responses import RedirectResponse, Response

from api.console.deps import ConsoleView, OrdersAction, OrdersPage, is_htmx, is_secure
from api.console.journey import build_journey
from api.console.routes.forms import blank_is_none, time_bound
from api.console.session import COOKIE_PATH
from api.deps import Commands, Queries
from api.errors import CancelRefused, OrderNotFound
from api.fields import CURSOR_PATTERN, CUSTOMER_ID_PATTERN
from api.pagination import InvalidCursor
from api.schemas import OrderOut, TimelineEntryOut
from domain.model import OrderStatus, workflow_id_for
from observability.logs import bind_log_context
from reactors.registry import REACTORS

router = APIRouter(prefix="/console/orders", include_in_schema=False)

PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
# Statuses from which a cancel may still be accepted (the saga refuses it once shipping has started).
CANCELLABLE = frozenset({OrderStatus.PLACED, OrderStatus.INVENTORY_RESERVED, OrderStatus.PAYMENT_CHARGED})
# How long after its last entry an ended order's page keeps refreshing (for the reactors' deliveries).
SETTLE = timedelta(seconds=10)
OrderIdPath = Annotated[str, Path(max_length=64)]
# The cancel's outcome, carried over the redirect of a cancel posted without JavaScript (read once).
FLASH_COOKIE = "order_saga_console_flash"


@router.get("")
async def search_orders(
    view: OrdersPage,
    queries: Queries,
    order_id: Annotated[str, Query(max_length=64)] = "",
    # The REST list's validation (`GET /orders`); an empty form field is no filter.
    customer_id: Annotated[
        str | None, Query(pattern=CUSTOMER_ID_PATTERN, max_length=64), BeforeValidator(blank_is_none)
    ] = None,
    status: Annotated[OrderStatus | None, Query(), BeforeValidator(blank_is_none)] = None,
    created_from: Annotated[str, Query(max_length=32)] = "",
    created_to: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN), BeforeValidator(blank_is_none)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> Response:
    """The orders, newest first, filtered; an order id goes straight to that order's page.

    `created_to` is inclusive to the second (the inputs' precision). Invalid filters: 422, a console page.
    """
    after = time_bound("created_from", created_from)
    before = time_bound("created_to", created_to, end=True)
    filters = {
        "order_id": order_id.strip(),
        "customer_id": customer_id or "",
        "status": status.value if status else "",
        "created_from": created_from,
        "created_to": created_to,
    }
    if filters["order_id"]:
        found = await _find(queries, filters["order_id"])
        if found is not None:
            return RedirectResponse(f"/console/orders/{found.order_id}", status_code=HTTPStatus.SEE_OTHER)
        return view.render(
            "orders.html",
            page=None,
            filters=filters,
            next_url=None,
            first_url=None,
            notice="No order with that id.",
        )
    try:
        page = await queries.orders(
            status=status,
            customer_id=customer_id,
            limit=limit,
            cursor=cursor,
            created_from=after,
            created_before=before,
        )
    except InvalidCursor:
        return view.render(
            "orders.html",
            status=HTTPStatus.BAD_REQUEST,
            page=None,
            filters=filters,
            next_url=None,
            first_url=_page_url(filters, limit, None),
            notice="Invalid page link.",
        )
    return view.render(
        "orders.html",
        page=page,
        filters=filters,
        next_url=_page_url(filters, limit, page.next_cursor) if page.next_cursor else None,
        # Keyset pages only go forward: the way back is to the newest.
        first_url=_page_url(filters, limit, None) if cursor else None,
        notice=None,
    )


def _page_url(filters: dict[str, str], limit: int, cursor: str | None) -> str:
    """The orders list with these filters, from `cursor` (None: the newest)."""
    query = {key: value for key, value in filters.items() if value}
    if cursor:
        query["cursor"] = cursor
    if limit != PAGE_SIZE:
        query["limit"] = str(limit)
    return f"/console/orders?{urlencode(query)}" if query else "/console/orders"


async def _find(queries: Queries, order_id: str) -> OrderOut | None:
    try:
        return await queries.order(str(uuid.UUID(order_id)))
    except (ValueError, OrderNotFound):
        return None


async def _order_context(view: ConsoleView, queries: Queries, order_id: str) -> dict[str, Any] | None:
    order = await _find(queries, order_id)
    if order is None:
        return None
    canonical = str(order.order_id)
    bind_log_context(order_id=canonical)
    timeline = await queries.timeline(canonical)
    now = datetime.now(UTC)
    journey = build_journey(timeline.entries, _subscribed(timeline.entries, order.status), now=now)
    # Reactors receive the closing event a moment after the saga ends: keep refreshing a little longer.
    settling = journey.end is None or now - journey.end < SETTLE
    return {
        "order": order,
        "timeline": timeline,
        "journey": journey,
        "workflow_url": view.state.workflow_url(workflow_id_for(canonical)),
        "cancellable": order.status in CANCELLABLE,
        "live": not order.status.is_terminal or journey.in_flight or settling,
    }


def _subscribed(entries: Sequence[TimelineEntryOut], status: OrderStatus) -> list[str]:
    """The reactors that get a lane: every one while the order goes on (its next events may concern
    them), then those bound to an event the order recorded (a lane of its own for what one did anyway)."""
    if not status.is_terminal:
        return [r.name for r in REACTORS]
    recorded = {
        e.summary.split(" ", 1)[0] for e in entries if e.source == "outbox" and e.kind == "event.recorded"
    }
    return [r.name for r in REACTORS if recorded & set(r.routing_keys)]


@router.get("/{order_id}")
async def order_page(view: OrdersPage, queries: Queries, order_id: OrderIdPath) -> Response:
    context = await _order_context(view, queries, order_id)
    if context is None:
        return view.render("not_found.html", status=HTTPStatus.NOT_FOUND, order_id=order_id)
    flash = view.request.cookies.get(FLASH_COOKIE)
    response = view.render("order.html", flash=unquote(flash)[:500] if flash else None, **context)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.get("/{order_id}/live")
async def order_live(view: OrdersPage, queries: Queries, order_id: OrderIdPath) -> Response:
    """The order's status, actions and journey (the page polls it while the order is in flight)."""
    context = await _order_context(view, queries, order_id)
    if context is None:
        return view.render("not_found.html", status=HTTPStatus.NOT_FOUND, order_id=order_id)
    return view.render("_order_live.html", **context)


@router.post("/{order_id}/cancel")
async def cancel_order(
    action: OrdersAction, commands: Commands, queries: Queries, order_id: OrderIdPath
) -> Response:
    """Cancel through the REST cancel's command; the answer says whether the saga accepted it."""
    found = await _find(queries, order_id)
    if found is None:
        return action.render(
            "_cancel_outcome.html", status=HTTPStatus.NOT_FOUND, outcome="No such order.", ok=False
        )
    canonical = str(found.order_id)
    try:
        await commands.cancel(canonical, f"cancelled from the console by {action.operator.name}")
        outcome, ok = (
            "Cancel accepted: the saga gives back the stock and the payment, then closes the order.",
            True,
        )
    except CancelRefused as refused:
        outcome, ok = f"Cancel refused: {refused}", False
    action.audit("cancel-order", order_id=canonical, accepted=ok)
    if not is_htmx(action.request):
        # Without JavaScript: back to the order's page, which shows the outcome once.
        response = RedirectResponse(f"/console/orders/{canonical}", status_code=HTTPStatus.SEE_OTHER)
        response.set_cookie(
            FLASH_COOKIE,
            quote(outcome),
            max_age=60,
            path=COOKIE_PATH,
            secure=is_secure(action.request),
            httponly=True,
            samesite="strict",
        )
        return response
    return action.render("_cancel_outcome.html", outcome=outcome, ok=ok)
