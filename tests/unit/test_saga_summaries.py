"""What the Temporal Web UI shows of a saga: activity summaries and current details, from the saga's input."""

from __future__ import annotations

import pytest

from activities.inventory import InventoryActivities
from activities.messages import OrderSagaInput, OrderSagaState, SagaLine
from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from domain.model import OrderStatus
from orchestrator import summaries

pytestmark = pytest.mark.unit

URL = "https://orders.example.com/console/orders/o-1"


def saga(*lines: tuple[str, int], total: int | None = 1250, currency: str | None = "EUR") -> OrderSagaInput:
    return OrderSagaInput(
        "o-1",
        "cust-42",
        lines=tuple(SagaLine(sku, quantity) for sku, quantity in lines),
        total=total,
        currency=currency,
        console_url=URL,
    )


@pytest.mark.parametrize(
    ("total", "currency", "charged"),
    [(1250, "EUR", "charge 12.50 EUR"), (1500, "JPY", "charge 1500 JPY"), (1500, "KWD", "charge 1.500 KWD")],
)
def test_the_charge_names_the_amount_in_the_currency_s_minor_unit(
    total: int, currency: str, charged: str
) -> None:
    assert (
        summaries.step_summary(PaymentActivities.charge_payment, saga(total=total, currency=currency))
        == charged
    )


def test_stock_steps_name_the_lines_and_a_long_order_the_first_three() -> None:
    assert (
        summaries.step_summary(InventoryActivities.reserve_inventory, saga(("SKU-A", 2)))
        == "reserve 2 x SKU-A"
    )
    many = saga(("A", 1), ("B", 2), ("C", 3), ("D", 4), ("E", 5))
    assert (
        summaries.step_summary(ShippingActivities.create_shipment, many)
        == "ship 1 x A, 2 x B, 3 x C (+2 more)"
    )


def test_a_saga_started_without_its_order_shows_the_step_names() -> None:
    bare = OrderSagaInput("o-1", "cust-42")
    assert summaries.step_summary(InventoryActivities.reserve_inventory, bare) == "reserve inventory"
    assert summaries.step_summary(PaymentActivities.refund_payment, bare) == "refund the payment"
    details = summaries.current_details(bare, OrderSagaState("o-1", OrderStatus.PLACED))
    assert details == "**Order** `o-1` of customer `cust-42`\n\n**PLACED**: reserving the stock"


def test_an_unusable_currency_does_not_fail_the_summary() -> None:
    # A summary is computed in workflow code: an exception there would fail the workflow task forever.
    assert (
        summaries.step_summary(PaymentActivities.charge_payment, saga(currency="XAU")) == "charge the payment"
    )


def test_current_details_say_what_the_saga_does_and_link_the_console() -> None:
    state = OrderSagaState("o-1", OrderStatus.INVENTORY_RESERVED, cancel_requested=True)
    assert summaries.current_details(saga(("SKU-A", 2)), state).split("\n\n") == [
        "**Order** `o-1` of customer `cust-42`: 2 x SKU-A, 12.50 EUR",
        "**INVENTORY_RESERVED**: charging the payment; cancel requested",
        f"[Open the order in the console]({URL})",
    ]
    closed = OrderSagaState(
        "o-1",
        OrderStatus.CANCELLED,
        failure_reason="CUSTOMER_CANCELLED",
        failure_detail="changed my mind",
        compensations_run=["refund_payment", "release_inventory"],
    )
    assert (
        "**CANCELLED**: CUSTOMER_CANCELLED (changed my mind); undone: refund_payment, release_inventory"
        in summaries.current_details(saga(("SKU-A", 2)), closed)
    )
