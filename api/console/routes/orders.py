"""Orders: search (id, customer, status, placement time; keyset pages), one order's page with its journey,
and cancel, through the same query and command code as the REST API (`api.queries`, `api.commands`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query
from starlette.responses import RedirectResponse, Response

from api.console.deps import Action, ConsoleView, Page, is_htmx
from api.console.journey import build_journey
from api.deps import Commands, Queries
from api.errors import CancelRefused, OrderNotFound
from api.pagination import InvalidCursor
from api.schemas import OrderOut
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


def _utc(value: str | None) -> datetime | None:
    """A `datetime-local` input (no zone), read as UTC; None when empty or not a time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@router.get("")
async def search_orders(
    view: Page,
    queries: Queries,
    order_id: Annotated[str, Query(max_length=64)] = "",
    customer_id: Annotated[str, Query(max_length=64)] = "",
    status: Annotated[str, Query(max_length=32)] = "",
    created_from: Annotated[str, Query(max_length=32)] = "",
    created_to: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> Response:
    """The orders, newest first, filtered; an order id goes straight to that order's page."""
    filters = {
        "order_id": order_id.strip(),
        "customer_id": customer_id.strip(),
        "status": status if status in OrderStatus.__members__ else "",
        "created_from": created_from,
        "created_to": created_to,
    }
    if filters["order_id"]:
        found = await _find(queries, filters["order_id"])
        if found is not None:
            return RedirectResponse(f"/console/orders/{found.order_id}", status_code=HTTPStatus.SEE_OTHER)
        return view.render(
            "orders.html", page=None, filters=filters, next_url=None, notice="No order with that id."
        )
    try:
        page = await queries.orders(
            status=OrderStatus(filters["status"]) if filters["status"] else None,
            customer_id=filters["customer_id"] or None,
            limit=limit,
            cursor=cursor,
            created_from=_utc(created_from),
            created_before=_utc(created_to),
        )
    except InvalidCursor:
        return view.render(
            "orders.html", page=None, filters=filters, next_url=None, notice="Invalid page link."
        )
    next_url = None
    if page.next_cursor:
        query = {key: value for key, value in filters.items() if value} | {"cursor": page.next_cursor}
        if limit != PAGE_SIZE:
            query["limit"] = str(limit)
        next_url = f"/console/orders?{urlencode(query)}"
    return view.render("orders.html", page=page, filters=filters, next_url=next_url, notice=None)


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
    journey = build_journey(timeline.entries, [r.name for r in REACTORS], now=now)
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


@router.get("/{order_id}")
async def order_page(view: Page, queries: Queries, order_id: OrderIdPath) -> Response:
    context = await _order_context(view, queries, order_id)
    if context is None:
        return view.render("not_found.html", status=HTTPStatus.NOT_FOUND, order_id=order_id)
    return view.render("order.html", **context)


@router.get("/{order_id}/live")
async def order_live(view: Page, queries: Queries, order_id: OrderIdPath) -> Response:
    """The order's status, actions and journey (the page polls it while the order is in flight)."""
    context = await _order_context(view, queries, order_id)
    if context is None:
        return view.render("not_found.html", status=HTTPStatus.NOT_FOUND, order_id=order_id)
    return view.render("_order_live.html", **context)


@router.post("/{order_id}/cancel")
async def cancel_order(
    action: Action, commands: Commands, queries: Queries, order_id: OrderIdPath
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
        return RedirectResponse(f"/console/orders/{canonical}", status_code=HTTPStatus.SEE_OTHER)
    return action.render("_cancel_outcome.html", outcome=outcome, ok=ok)
