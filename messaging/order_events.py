"""The saga's events, built from the order's rows and written to the outbox in the step's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import EventType, Payload, event_id_for, new_event
from contracts.orders import (
    ORDER_CANCELLED_V1,
    ORDER_SHIPPED_V1,
    OrderCancelledV1,
    OrderLineV1,
    OrderShippedV1,
    ShipmentV1,
)
from infra import models
from infra.models import utcnow
from messaging.outbox import add_to_outbox

# The order's columns an event is built from; the callers read them with the order's lock.
ORDER_EVENT_COLUMNS = (
    models.Order.id,
    models.Order.workflow_id,
    models.Order.customer_id,
    models.Order.customer_email,
    models.Order.currency,
    models.Order.total_amount,
)


async def record_order_shipped(
    conn: AsyncConnection,
    order: Row[Any],
    lines: Sequence[Row[Any]],
    carrier: str | None,
    tracking_number: str | None,
) -> None:
    """Write OrderShipped v1 for a SHIPPED order to the outbox: `order` has `ORDER_EVENT_COLUMNS`, `lines`
    are its lines (`sku`, `quantity`, `unit_price`, `line_total`). Raises LookupError without a shipment."""
    if carrier is None or tracking_number is None:
        raise LookupError(f"order {order.id} is shipped but has no shipment")
    shipped_at = utcnow()
    payload = OrderShippedV1(
        order_id=order.id,
        customer_id=order.customer_id,
        customer_email=order.customer_email,
        currency=order.currency,
        total_amount=order.total_amount,
        lines=tuple(
            OrderLineV1(
                sku=line.sku, quantity=line.quantity, unit_price=line.unit_price, line_total=line.line_total
            )
            for line in lines
        ),
        shipment=ShipmentV1(carrier=carrier, tracking_number=tracking_number),
        shipped_at=shipped_at,
    )
    await _record(conn, order, ORDER_SHIPPED_V1, payload, shipped_at)


async def record_order_cancelled(
    conn: AsyncConnection,
    order: Row[Any],
    *,
    final_status: str,
    reason: str,
    detail: str,
    compensations: Sequence[str],
) -> None:
    """Write OrderCancelled v1 for an order the saga closed as CANCELLED or FAILED to the outbox (`order`
    has `ORDER_EVENT_COLUMNS`)."""
    cancelled_at = utcnow()
    payload = OrderCancelledV1(
        order_id=order.id,
        customer_id=order.customer_id,
        customer_email=order.customer_email,
        final_status=final_status,
        reason=reason,
        detail=detail,
        compensations=tuple(compensations),
        currency=order.currency,
        total_amount=order.total_amount,
        cancelled_at=cancelled_at,
    )
    await _record(conn, order, ORDER_CANCELLED_V1, payload, cancelled_at)


async def _record(
    conn: AsyncConnection, order: Row[Any], event_type: EventType, payload: Payload, at: datetime
) -> None:
    """The order's event of this type into the outbox. Its id depends only on the workflow id and the type,
    so a retried or replayed step writes the same event again, which the outbox ignores."""
    event = new_event(
        event_type,
        event_id=event_id_for(order.workflow_id, event_type),
        subject=order.id,
        time=at,
        data=payload,
    )
    await add_to_outbox(conn, event)
