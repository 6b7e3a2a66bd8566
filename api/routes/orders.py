"""/orders: place, follow, list and cancel orders."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status

from api.deps import Commands, IdempotencyKey, OrderId, OrderReader, OrderWriter, Queries
from api.fields import CURSOR_PATTERN, CUSTOMER_ID_PATTERN
from api.idempotency import KEY_CHARACTERS
from api.problems import problem_responses
from api.schemas import (
    CancelAccepted,
    CancelOrderIn,
    OrderAccepted,
    OrderNotifications,
    OrderOut,
    OrderPage,
    OrderTimeline,
    PlaceOrderIn,
)
from domain.model import OrderStatus

router = APIRouter(prefix="/orders", tags=["orders"])

IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "A unique key per order attempt (a UUID is ideal), bare or as a quoted string. "
    "The same key with the same body returns the same order and starts nothing new; with another "
    "body it is refused (422); while its first request is still running, 409.",
    "schema": {"type": "string", "pattern": rf'^({KEY_CHARACTERS}|"{KEY_CHARACTERS}")$'},
    "example": "6f1d2c8e-7a3b-4b8e-9f55-0c1e2d3f4a5b",
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Place an order",
    description="Records the order (PLACED) and starts its saga: reserve stock, charge, ship. "
    "Follow it at the `Location` it answers with. Needs the `orders:write` scope.",
    responses={
        202: {
            "description": "Accepted: the order is recorded and its saga runs.",
            "headers": {
                "Location": {
                    "description": "The order's URL.",
                    "schema": {"type": "string"},
                    "required": True,
                },
                "Idempotent-Replayed": {
                    "description": "`true` when this answers a repeated Idempotency-Key.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **problem_responses(400, 401, 403, 409, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def place_order(
    caller: OrderWriter,
    key: IdempotencyKey,
    body: PlaceOrderIn,
    commands: Commands,
    request: Request,
    response: Response,
) -> OrderAccepted:
    placed = await commands.place(caller, key, body)
    href = request.app.url_path_for("get_order", order_id=placed.order_id)
    response.headers["Location"] = href
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return OrderAccepted(order_id=uuid.UUID(placed.order_id), status=placed.status, href=href)


@router.get(
    "",
    summary="List orders",
    description="Newest first. Filter by status and customer; page with `cursor` (keyset pagination). "
    "Needs `orders:read`.",
    responses=problem_responses(401, 403, 422),
)
async def list_orders(
    caller: OrderReader,
    queries: Queries,
    status: Annotated[OrderStatus | None, Query(description="Only orders in this status.")] = None,
    customer_id: Annotated[
        str | None,
        Query(pattern=CUSTOMER_ID_PATTERN, max_length=64, description="Only this customer's orders."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page."),
    ] = None,
) -> OrderPage:
    return await queries.orders(status=status, customer_id=customer_id, limit=limit, cursor=cursor)


@router.get(
    "/{order_id}",
    name="get_order",
    summary="Follow an order",
    description="Status, lines, amounts, payments, shipment, status history and failure reason. "
    "Visible as soon as `POST /orders` has answered. Needs `orders:read`.",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_order(caller: OrderReader, order_id: OrderId, queries: Queries) -> OrderOut:
    return await queries.order(order_id)


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel an order",
    description="Accepted (202) until shipping starts: the saga then undoes what it did and the order "
    "ends CANCELLED. Refused (409, with the reason) once shipping has started or the order has ended. "
    "Needs `orders:write`.",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def cancel_order(
    caller: OrderWriter,
    order_id: OrderId,
    commands: Commands,
    body: Annotated[CancelOrderIn | None, Body()] = None,
) -> CancelAccepted:
    return await commands.cancel(order_id, (body or CancelOrderIn()).reason)


@router.get(
    "/{order_id}/notifications",
    summary="The order's customer notifications",
    description="The mails sent (or being sent) to the customer about this order, oldest first. Built "
    "from the order's events by the notification reactor, so it may lag the order a little. "
    "Needs `orders:read`.",
    responses=problem_responses(401, 403, 404, 422),
)
async def order_notifications(caller: OrderReader, order_id: OrderId, queries: Queries) -> OrderNotifications:
    return await queries.notifications(order_id)


@router.get(
    "/{order_id}/timeline",
    summary="The order's timeline",
    description="One chronological list of what happened to the order across the workflow engine and "
    "the broker: every saga step (scheduled, started, completed or failed, with attempts and durations), "
    "compensations and cancel requests from the saga's Temporal history; the outbox (event recorded, "
    "published, failed publish attempts); and each reactor's deliveries (received, processed, duplicate "
    "ignored, retry scheduled, dead-lettered, redriven, replayed). Works in any state of the order. "
    "Needs `orders:read`.",
    responses=problem_responses(401, 403, 404, 422),
)
async def order_timeline(caller: OrderReader, order_id: OrderId, queries: Queries) -> OrderTimeline:
    return await queries.timeline(order_id)
