"""What the API accepts and answers about orders (and its probes): pydantic models, kept apart from the ORM
models and from the reactors' own read models."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from api.fields import (
    CLOSED,
    MAX_LINES,
    MAX_QUANTITY,
    PRINTABLE_TEXT,
    CountryCode,
    CustomerId,
    Email,
    PaymentToken,
    PostalCode,
    ShortText,
    Sku,
    Text,
)
from api.problems import Problem
from domain.model import DuplicateSku, OrderStatus, check_one_line_per_sku

# --- orders: requests


class CustomerIn(BaseModel):
    model_config = CLOSED
    id: CustomerId
    email: Email


class OrderItemIn(BaseModel):
    model_config = CLOSED
    sku: Sku
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY, examples=[2])]


class ShippingAddressIn(BaseModel):
    model_config = CLOSED
    name: Text = Field(examples=["Ada Lovelace"])
    line1: Text = Field(examples=["1 Analytical Way"])
    line2: Text | None = None
    city: ShortText = Field(examples=["Berlin"])
    postal_code: PostalCode = Field(examples=["10115"])
    country: CountryCode


ADDRESS_EXAMPLE: dict[str, Any] = {
    "name": "Ada Lovelace",
    "line1": "1 Analytical Way",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "DE",
}
PLACE_ORDER_EXAMPLE: dict[str, Any] = {
    "customer": {"id": "cust-42", "email": "ada@example.com"},
    "items": [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-B", "quantity": 1}],
    "payment_token": "tok_ok",
    "shipping_address": ADDRESS_EXAMPLE,
}


class PlaceOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PLACE_ORDER_EXAMPLE]})

    customer: CustomerIn
    items: list[OrderItemIn] = Field(
        min_length=1, max_length=MAX_LINES, description="1 to 50 lines, each SKU at most once."
    )
    payment_token: PaymentToken
    shipping_address: ShippingAddressIn

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[OrderItemIn]) -> list[OrderItemIn]:
        # The rule is the domain's; here its refusal becomes a field error on `items` (a 422).
        try:
            check_one_line_per_sku(item.sku for item in items)
        except DuplicateSku as err:
            raise PydanticCustomError("duplicate_sku", str(err), {"skus": ", ".join(err.skus)}) from err
        return items


class CancelOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "changed my mind"}]})
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=PRINTABLE_TEXT)
    ] = "cancelled by the customer"


# --- orders: answers


class OrderAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "status": "PLACED",
                    "href": "/orders/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                }
            ]
        }
    )
    order_id: UUID
    status: OrderStatus
    href: str = Field(description="Where to follow the order (also in the `Location` header).")


class CustomerOut(BaseModel):
    id: str
    email: str


class OrderLineOut(BaseModel):
    line_no: int
    sku: str
    quantity: int
    unit_price: int = Field(description="Minor units of the order's currency.")
    line_total: int


class ShippingAddressOut(BaseModel):
    name: str
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: str


class PaymentOut(BaseModel):
    kind: str = Field(description="`charge` or `refund`.")
    amount: int
    currency: str
    status: str = Field(description="`pending`, `succeeded` or `declined`.")
    reference: str | None = Field(description="The provider's reference.")
    failure_detail: str | None = None


class ShipmentOut(BaseModel):
    carrier: str
    tracking_number: str
    status: str = Field(description="`created` or `cancelled`.")


class StatusChangeOut(BaseModel):
    status: OrderStatus
    reason: str | None = None
    at: datetime


class FailureOut(BaseModel):
    reason: str = Field(
        description="OUT_OF_STOCK, PAYMENT_DECLINED, SHIPPING_UNAVAILABLE, CUSTOMER_CANCELLED..."
    )
    detail: str | None = None


class OrderOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "status": "SHIPPED",
                    "customer": {"id": "cust-42", "email": "ada@example.com"},
                    "currency": "EUR",
                    "total_amount": 2250,
                    "lines": [
                        {"line_no": 1, "sku": "SKU-A", "quantity": 2, "unit_price": 1000, "line_total": 2000},
                        {"line_no": 2, "sku": "SKU-B", "quantity": 1, "unit_price": 250, "line_total": 250},
                    ],
                    "shipping_address": ADDRESS_EXAMPLE,
                    "payments": [
                        {
                            "kind": "charge",
                            "amount": 2250,
                            "currency": "EUR",
                            "status": "succeeded",
                            "reference": "ch_5f0c2d9e1a7b3c4d",
                        }
                    ],
                    "shipment": {
                        "carrier": "simulated-post",
                        "tracking_number": "TRK1A2B",
                        "status": "created",
                    },
                    "status_history": [
                        {"status": "PLACED", "at": "2026-01-05T10:00:00.000000Z"},
                        {"status": "INVENTORY_RESERVED", "at": "2026-01-05T10:00:00.120000Z"},
                        {"status": "PAYMENT_CHARGED", "at": "2026-01-05T10:00:00.250000Z"},
                        {"status": "SHIPPED", "at": "2026-01-05T10:00:00.400000Z"},
                    ],
                    "failure": None,
                    "created_at": "2026-01-05T10:00:00.000000Z",
                    "updated_at": "2026-01-05T10:00:00.400000Z",
                }
            ]
        }
    )

    order_id: UUID
    status: OrderStatus
    customer: CustomerOut
    currency: str
    total_amount: int = Field(description="Minor units of `currency`.")
    lines: list[OrderLineOut]
    shipping_address: ShippingAddressOut
    payments: list[PaymentOut]
    shipment: ShipmentOut | None
    status_history: list[StatusChangeOut]
    failure: FailureOut | None = Field(description="Why the order failed or was cancelled; null otherwise.")
    created_at: datetime
    updated_at: datetime


class OrderSummaryOut(BaseModel):
    order_id: UUID
    status: OrderStatus
    customer_id: str
    currency: str
    total_amount: int
    failure_reason: str | None
    created_at: datetime


class OrderPage(BaseModel):
    items: list[OrderSummaryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class CancelAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "status": "INVENTORY_RESERVED",
                    "detail": "cancel accepted; compensating",
                }
            ]
        }
    )
    order_id: UUID
    status: OrderStatus = Field(description="The status when the cancel was accepted; it ends CANCELLED.")
    detail: str


# --- what the reactors keep (read models), as this API shows it. The class names are the OpenAPI
# component names clients already know; the reactors' own models stay internal to them.


class NotificationView(BaseModel):
    event_id: str
    event_type: str = Field(description="`order.shipped` or `order.cancelled`.")
    recipient: str
    subject: str
    body: str
    message_id: str = Field(description="The mail's Message-ID (from the event id).")
    status: str = Field(description="`sending`, `sent`, `retrying` (a transient SMTP failure) or `failed`.")
    send_attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None = Field(default=None, description="Why the last send failed (retrying, failed).")


class LoyaltyEntry(BaseModel):
    order_id: str
    points: int
    reason: str
    created_at: datetime


class LoyaltyAccount(BaseModel):
    customer_id: str
    points: int = Field(description="The balance; 0 for a customer without points.")
    entries: list[LoyaltyEntry] = Field(description="The latest ledger entries, newest first.")


class SkuSales(BaseModel):
    sku: str
    currency: str
    units: int
    revenue: int = Field(description="Minor units of `currency`.")


class DailySales(BaseModel):
    date: date
    orders_shipped: int
    orders_cancelled: int = Field(description="Orders closed CANCELLED or FAILED that day.")
    skus: list[SkuSales] = Field(description="By SKU, then currency.")


class OrderNotifications(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "items": [
                        {
                            "event_id": "5f0c2d9e-1a7b-4c4d-9e8f-0a1b2c3d4e5f",
                            "event_type": "order.shipped",
                            "recipient": "ada@example.com",
                            "subject": "Your order has shipped",
                            "body": "Your order is on its way.",
                            "message_id": "<5f0c2d9e-1a7b-4c4d-9e8f-0a1b2c3d4e5f@orders>",
                            "status": "sent",
                            "send_attempts": 1,
                            "created_at": "2026-01-05T10:00:01Z",
                            "sent_at": "2026-01-05T10:00:02Z",
                        }
                    ],
                }
            ]
        }
    )
    order_id: UUID
    items: list[NotificationView] = Field(description="Oldest first; empty until the reactor has caught up.")


class TimelineEntryOut(BaseModel):
    at: datetime
    source: Literal["workflow", "outbox", "reactor"] = Field(
        description="The Temporal history, the outbox, or a reactor's delivery ledger."
    )
    actor: str = Field(description="`saga`, `outbox`, or the reactor's name.")
    kind: str = Field(
        description="What happened, dotted: `step.completed`, `compensation.completed`, `cancel.requested`, "
        "`event.published`, `delivery.processed`, `delivery.duplicate_ignored`..."
    )
    summary: str
    step: str | None = None
    attempt: int | None = None
    duration_ms: float | None = None
    detail: str | None = None
    event_id: str | None = None
    trace_id: str | None = Field(default=None, description="The trace (W3C trace id), when tracing is on.")


class OrderTimeline(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "workflow_id": "order-0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
                    "warnings": [],
                    "entries": [
                        {
                            "at": "2026-01-05T10:00:00.120Z",
                            "source": "workflow",
                            "actor": "saga",
                            "kind": "step.completed",
                            "summary": "charge_payment completed after 3 attempts",
                            "step": "charge_payment",
                            "attempt": 3,
                            "duration_ms": 14.2,
                            "detail": "ch_7f9575dba4770e84",
                        },
                        {
                            "at": "2026-01-05T10:00:00.410Z",
                            "source": "reactor",
                            "actor": "loyalty",
                            "kind": "delivery.processed",
                            "summary": "loyalty: order.shipped.v1 processed",
                            "attempt": 1,
                            "duration_ms": 6.1,
                            "event_id": "5f0c2d9e-1a7b-4c4d-9e8f-0a1b2c3d4e5f",
                        },
                    ],
                }
            ]
        }
    )
    order_id: UUID
    workflow_id: str
    entries: list[TimelineEntryOut] = Field(description="Oldest first.")
    warnings: list[str] = Field(description="What could not be read (the entries are what could).")


# --- operations


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class CheckOut(BaseModel):
    ok: bool
    detail: str | None = None


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {"database": {"ok": True}, "temporal": {"ok": True}, "broker": {"ok": True}},
                }
            ]
        }
    )
    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckOut]


class NotReady(Problem):
    """503 from /readyz: a problem document with the result of each check."""

    checks: dict[str, CheckOut]
