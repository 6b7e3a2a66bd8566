"""Domain rules: money, pricing, the order status machine. No I/O."""

from __future__ import annotations

import itertools

import pytest

from domain.errors import CurrencyMismatch, InvalidOrder, InvalidStatusTransition, UnknownProduct
from domain.model import (
    Money,
    OrderStatus,
    RequestedItem,
    check_transition,
    price_order,
    workflow_id_for,
)

pytestmark = pytest.mark.unit


def test_money_adds_within_one_currency_only() -> None:
    assert Money(150, "EUR") + Money(250, "EUR") == Money(400, "EUR")
    with pytest.raises(CurrencyMismatch):
        Money(1, "EUR") + Money(1, "USD")


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", ""])
def test_money_rejects_malformed_currency(currency: str) -> None:
    with pytest.raises(InvalidOrder):
        Money(1, currency)


def test_price_order_totals_lines_from_catalogue_prices() -> None:
    prices = {"A": Money(1_000, "EUR"), "B": Money(250, "EUR")}
    lines, total = price_order([RequestedItem("A", 2), RequestedItem("B", 3)], prices)
    assert [(line.sku, line.total.amount) for line in lines] == [("A", 2_000), ("B", 750)]
    assert total == Money(2_750, "EUR")


def test_price_order_refuses_unknown_duplicate_empty_and_mixed_currency() -> None:
    prices = {"A": Money(1_000, "EUR"), "U": Money(5, "USD")}
    with pytest.raises(UnknownProduct) as unknown:
        price_order([RequestedItem("A", 1), RequestedItem("X", 1)], prices)
    assert unknown.value.skus == ["X"]
    with pytest.raises(InvalidOrder, match="once per order"):
        price_order([RequestedItem("A", 1), RequestedItem("A", 2)], prices)
    with pytest.raises(InvalidOrder, match="at least one item"):
        price_order([], prices)
    with pytest.raises(InvalidOrder, match="at least 1"):
        price_order([RequestedItem("A", 0)], prices)
    with pytest.raises(CurrencyMismatch):
        price_order([RequestedItem("A", 1), RequestedItem("U", 1)], prices)


def test_status_machine_moves_forward_and_compensates() -> None:
    path = [
        OrderStatus.PLACED,
        OrderStatus.INVENTORY_RESERVED,
        OrderStatus.PAYMENT_CHARGED,
        OrderStatus.SHIPPED,
    ]
    for current, target in itertools.pairwise(path):
        assert check_transition(current, target) is True
    for current in path[:-1]:
        assert check_transition(current, OrderStatus.COMPENSATING) is True
    assert check_transition(OrderStatus.COMPENSATING, OrderStatus.CANCELLED) is True
    assert check_transition(OrderStatus.COMPENSATING, OrderStatus.FAILED) is True


def test_status_machine_treats_repeats_as_retries_and_refuses_the_rest() -> None:
    assert check_transition(OrderStatus.SHIPPED, OrderStatus.SHIPPED) is False
    with pytest.raises(InvalidStatusTransition):
        check_transition(OrderStatus.SHIPPED, OrderStatus.COMPENSATING)
    with pytest.raises(InvalidStatusTransition):
        check_transition(OrderStatus.PLACED, OrderStatus.SHIPPED)
    with pytest.raises(InvalidStatusTransition):
        check_transition(OrderStatus.CANCELLED, OrderStatus.PLACED)
    assert {s for s in OrderStatus if s.is_terminal} == {
        OrderStatus.SHIPPED,
        OrderStatus.CANCELLED,
        OrderStatus.FAILED,
    }


def test_workflow_id_depends_on_the_order_id_alone() -> None:
    assert workflow_id_for("abc") == workflow_id_for("abc") == "order-abc"
