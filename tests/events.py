"""Order events built directly (bypassing the saga), for the reactor, contract and catalog tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.envelope import CloudEvent, event_id_for, new_event
from contracts.orders import (
    ORDER_CANCELLED_V1,
    ORDER_SHIPPED_V1,
    OrderCancelledV1,
    OrderLineV1,
    OrderShippedV1,
    ShipmentV1,
)
from domain.model import workflow_id_for


def cancelled_payload(
    *,
    order_id: str = "o-1",
    customer_id: str = "c-1",
    final_status: str = "FAILED",
    reason: str = "PAYMENT_DECLINED",
    detail: str = "card declined",
    email: str | None = None,
    at: datetime | None = None,
) -> OrderCancelledV1:
    """An OrderCancelled v1 payload: 10.00 EUR, its payment refunded and its stock released."""
    return OrderCancelledV1(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=email or f"{customer_id}@example.com",
        final_status=final_status,
        reason=reason,
        detail=detail,
        compensations=("refund_payment", "release_inventory"),
        currency="EUR",
        total_amount=1_000,
        cancelled_at=at or datetime.now(UTC),
    )


def shipped_event(
    *,
    order_id: str | None = None,
    customer_id: str = "cust-1",
    lines: tuple[tuple[str, int, int], ...] = (("SKU-A", 2, 1_000),),
    at: datetime | None = None,
    currency: str = "EUR",
    email: str | None = None,
) -> CloudEvent:
    order_id = order_id or str(uuid.uuid4())
    at = at or datetime.now(UTC)
    order_lines = tuple(
        OrderLineV1(sku=sku, quantity=q, unit_price=p, line_total=q * p) for sku, q, p in lines
    )
    payload = OrderShippedV1(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=email or f"{customer_id}@example.com",
        currency=currency,
        total_amount=sum(line.line_total for line in order_lines),
        lines=order_lines,
        shipment=ShipmentV1(carrier="SIM", tracking_number="TRACK-" + order_id[:8]),
        shipped_at=at,
    )
    return new_event(
        ORDER_SHIPPED_V1,
        event_id=event_id_for(workflow_id_for(order_id), ORDER_SHIPPED_V1),
        subject=order_id,
        time=at,
        data=payload,
    )


def cancelled_event(
    *, order_id: str | None = None, customer_id: str = "cust-1", email: str | None = None
) -> CloudEvent:
    order_id = order_id or str(uuid.uuid4())
    at = datetime.now(UTC)
    payload = cancelled_payload(order_id=order_id, customer_id=customer_id, email=email, at=at)
    return new_event(
        ORDER_CANCELLED_V1,
        event_id=event_id_for(workflow_id_for(order_id), ORDER_CANCELLED_V1),
        subject=order_id,
        time=at,
        data=payload,
    )
