"""The saga's events, built from the order's rows and written to the outbox in the step's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import event_id_for, new_event
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


async def record_order_shipped(session: AsyncSession, order: models.Order) -> None:
    """Write OrderShipped v1 for a SHIPPED order (its shipment must exist) to the outbox."""
    shipment = await session.scalar(select(models.Shipment).where(models.Shipment.order_id == order.id))
    if shipment is None:
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
            for line in order.lines
        ),
        shipment=ShipmentV1(carrier=shipment.carrier, tracking_number=shipment.tracking_number),
        shipped_at=shipped_at,
    )
    event = new_event(
        ORDER_SHIPPED_V1,
        event_id=event_id_for(order.workflow_id, ORDER_SHIPPED_V1),
        subject=order.id,
        time=shipped_at,
        data=payload,
    )
    await add_to_outbox(session, event)


async def record_order_cancelled(
    session: AsyncSession,
    order: models.Order,
    *,
    final_status: str,
    reason: str,
    detail: str,
    compensations: Sequence[str],
) -> None:
    """Write OrderCancelled v1 for an order the saga closed as CANCELLED or FAILED to the outbox."""
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
    event = new_event(
        ORDER_CANCELLED_V1,
        event_id=event_id_for(order.workflow_id, ORDER_CANCELLED_V1),
        subject=order.id,
        time=cancelled_at,
        data=payload,
    )
    await add_to_outbox(session, event)
