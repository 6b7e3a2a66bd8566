"""The order service's events, version 1. Amounts are integer minor units (cents) of `currency`."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, Field

from contracts.envelope import EventType, Payload

Sku = Annotated[str, Field(min_length=1, max_length=64)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
MinorUnits = Annotated[int, Field(ge=0)]


class OrderLineV1(Payload):
    sku: Sku
    quantity: Annotated[int, Field(gt=0)]
    unit_price: MinorUnits
    line_total: MinorUnits


class ShipmentV1(Payload):
    carrier: Annotated[str, Field(min_length=1, max_length=50)]
    tracking_number: Annotated[str, Field(min_length=1, max_length=100)]


class OrderShippedV1(Payload):
    """The goods have left the warehouse; the customer was charged `total_amount`."""

    order_id: Annotated[str, Field(min_length=1, max_length=36)]
    customer_id: Annotated[str, Field(min_length=1, max_length=64)]
    customer_email: Annotated[str, Field(min_length=3, max_length=320)]
    currency: Currency
    total_amount: MinorUnits
    lines: Annotated[tuple[OrderLineV1, ...], Field(min_length=1)]
    shipment: ShipmentV1
    shipped_at: AwareDatetime


class OrderCancelledV1(Payload):
    """The saga ended without shipping (status CANCELLED or FAILED) and undid what it had done."""

    order_id: Annotated[str, Field(min_length=1, max_length=36)]
    customer_id: Annotated[str, Field(min_length=1, max_length=64)]
    customer_email: Annotated[str, Field(min_length=3, max_length=320)]
    final_status: Annotated[str, Field(pattern=r"^(CANCELLED|FAILED)$")]
    reason: Annotated[str, Field(min_length=1, max_length=64)]
    detail: str
    # The compensations that ran, newest first (release_inventory, refund_payment, cancel_shipment).
    compensations: tuple[str, ...]
    currency: Currency
    total_amount: MinorUnits
    cancelled_at: AwareDatetime


ORDER_SHIPPED_V1 = EventType("order.shipped", 1, OrderShippedV1)
ORDER_CANCELLED_V1 = EventType("order.cancelled", 1, OrderCancelledV1)

# Every event the service emits, by CloudEvents type (which is also the routing key).
EVENT_TYPES: dict[str, EventType] = {event.type: event for event in (ORDER_SHIPPED_V1, ORDER_CANCELLED_V1)}
