"""Building and publishing events directly (bypassing the saga) for the reactor tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.envelope import CloudEvent, encode_event, event_id_for, new_event
from contracts.orders import (
    ORDER_CANCELLED_V1,
    ORDER_SHIPPED_V1,
    OrderCancelledV1,
    OrderLineV1,
    OrderShippedV1,
    ShipmentV1,
)
from domain.model import workflow_id_for
from messaging.broker import ConfirmedPublisher
from tests.integration.conftest import EventStack


def shipped_event(
    *,
    order_id: str | None = None,
    customer_id: str = "cust-1",
    lines: tuple[tuple[str, int, int], ...] = (("SKU-A", 2, 1_000),),
    at: datetime | None = None,
) -> CloudEvent:
    order_id = order_id or str(uuid.uuid4())
    at = at or datetime.now(UTC)
    order_lines = tuple(
        OrderLineV1(sku=sku, quantity=q, unit_price=p, line_total=q * p) for sku, q, p in lines
    )
    payload = OrderShippedV1(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=f"{customer_id}@example.com",
        currency="EUR",
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


def cancelled_event(*, order_id: str | None = None, customer_id: str = "cust-1") -> CloudEvent:
    order_id = order_id or str(uuid.uuid4())
    at = datetime.now(UTC)
    payload = OrderCancelledV1(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=f"{customer_id}@example.com",
        final_status="FAILED",
        reason="PAYMENT_DECLINED",
        detail="card declined",
        compensations=("refund_payment", "release_inventory"),
        currency="EUR",
        total_amount=1_000,
        cancelled_at=at,
    )
    return new_event(
        ORDER_CANCELLED_V1,
        event_id=event_id_for(workflow_id_for(order_id), ORDER_CANCELLED_V1),
        subject=order_id,
        time=at,
        data=payload,
    )


async def publish(
    stack: EventStack,
    event: CloudEvent | None = None,
    *,
    body: bytes | None = None,
    routing_key: str | None = None,
    message_id: str | None = None,
    exchange: str | None = None,
    headers: dict[str, object] | None = None,
) -> None:
    """Publish like the relay does (persistent, confirmed, mandatory), or any raw body; `headers` as the
    relay sets them (e.g. `traceparent`)."""
    publisher = ConfirmedPublisher(stack.settings, "test-publisher")
    try:
        await publisher.publish(
            exchange=stack.topology.exchange if exchange is None else exchange,
            routing_key=routing_key or (event.type if event else "order.shipped.v1"),
            body=body if body is not None else encode_event(event) if event else b"",
            message_id=message_id or (event.id if event else str(uuid.uuid4())),
            message_type=event.type if event else None,
            headers=headers,
        )
    finally:
        await publisher.close()
