"""The saga in business terms for the Temporal Web UI: one-line activity summaries and the current details.

Pure functions of the saga's input and state (workflow code calls them, so nothing here may do I/O or read
the clock). Amounts are formatted by domain.money from integer minor units. Shapes:

- `step_summary(InventoryActivities.reserve_inventory, saga)` -> "reserve 2 x SKU-A, 1 x SKU-B";
  `charge_payment` -> "charge 12.50 EUR"; a saga started without lines or total -> "reserve inventory".
- `current_details(saga, state)` -> a few lines of Temporal markdown: the order, what the saga is doing
  now, and a link to the order's console page when the saga knows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from activities.inventory import InventoryActivities
from activities.messages import OrderSagaInput, OrderSagaState
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from domain.errors import InvalidOrder
from domain.model import OrderStatus
from domain.money import format_amount

# Summaries are one line; an order of many lines names the first few.
SHOWN_LINES = 3

Step = Callable[..., Awaitable[Any]]


def items(saga: OrderSagaInput) -> str | None:
    """`"2 x SKU-A, 1 x SKU-B (+2 more)"`; None when the saga was started without its lines."""
    if not saga.lines:
        return None
    shown = ", ".join(f"{line.quantity} x {line.sku}" for line in saga.lines[:SHOWN_LINES])
    more = len(saga.lines) - SHOWN_LINES
    return f"{shown} (+{more} more)" if more > 0 else shown


def total(saga: OrderSagaInput) -> str | None:
    """`"12.50 EUR"`; None when the saga was started without its total (or with a currency ISO 4217 lacks)."""
    if saga.total is None or saga.currency is None:
        return None
    try:
        return format_amount(saga.total, saga.currency)
    except InvalidOrder:  # the order was priced in it, so never expected; a summary must not fail the saga
        return None


def _with(verb: str, what: str | None, otherwise: str) -> str:
    return f"{verb} {what}" if what else otherwise


_STEPS: dict[Step, Callable[[OrderSagaInput], str]] = {
    InventoryActivities.reserve_inventory: lambda saga: _with("reserve", items(saga), "reserve inventory"),
    InventoryActivities.release_inventory: lambda saga: _with("release", items(saga), "release inventory"),
    PaymentActivities.charge_payment: lambda saga: _with("charge", total(saga), "charge the payment"),
    PaymentActivities.refund_payment: lambda saga: _with("refund", total(saga), "refund the payment"),
    ShippingActivities.create_shipment: lambda saga: _with("ship", items(saga), "book the shipment"),
    ShippingActivities.cancel_shipment: lambda _: "cancel the shipment",
    OrderActivities.mark_order_shipped: lambda _: "mark SHIPPED, consume the stock, record OrderShipped",
}


def step_summary(step: Step, saga: OrderSagaInput) -> str:
    """The summary of a step or compensation (an activity method of the saga). Raises KeyError for another."""
    return _STEPS[step](saga)


def recording(status: OrderStatus) -> str:
    """The summary of the local step that records a status (`"record COMPENSATING"`)."""
    return f"record {status}"


def closing(status: OrderStatus, reason: str) -> str:
    """The summary of the closing write of an unwound saga (`"close CANCELLED (WORKFLOW_CANCELLED)"`)."""
    return f"close {status} ({reason}), record OrderCancelled"


_DOING = {
    OrderStatus.PLACED: "reserving the stock",
    OrderStatus.INVENTORY_RESERVED: "charging the payment",
    OrderStatus.PAYMENT_CHARGED: "shipping",
}


def current_details(saga: OrderSagaInput, state: OrderSagaState) -> str:
    """What the Web UI shows on the workflow's page (Temporal markdown, a few short lines)."""
    order = ", ".join(part for part in (items(saga), total(saga)) if part)
    lines = [
        f"**Order** `{saga.order_id}` of customer `{saga.customer_id}`" + (f": {order}" if order else "")
    ]
    status = state.status
    if status == OrderStatus.COMPENSATING:
        lines.append(f"**{status}**: {state.failure_reason} ({state.failure_detail}); undoing the steps")
    elif status in (OrderStatus.FAILED, OrderStatus.CANCELLED):
        undone = ", ".join(state.compensations_run) or "nothing"
        lines.append(f"**{status}**: {state.failure_reason} ({state.failure_detail}); undone: {undone}")
    elif status == OrderStatus.SHIPPED:
        lines.append(f"**{status}**")
    else:
        cancel = "; cancel requested" if state.cancel_requested else ""
        lines.append(f"**{status}**: {_DOING.get(status, 'in progress')}{cancel}")
    if saga.console_url:
        lines.append(f"[Open the order in the console]({saga.console_url})")
    return "\n\n".join(lines)
