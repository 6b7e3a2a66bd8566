"""Orders, their lines and their prices (`Money`, from domain.money), and the order status machine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from domain.errors import InvalidOrder, InvalidStatusTransition, UnknownProduct
from domain.money import Money as Money  # re-exported: the order rules price in it


class OrderStatus(StrEnum):
    PLACED = "PLACED"
    INVENTORY_RESERVED = "INVENTORY_RESERVED"
    PAYMENT_CHARGED = "PAYMENT_CHARGED"
    SHIPPED = "SHIPPED"
    COMPENSATING = "COMPENSATING"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.FAILED})

_ALLOWED_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PLACED: frozenset({OrderStatus.INVENTORY_RESERVED, OrderStatus.COMPENSATING}),
    OrderStatus.INVENTORY_RESERVED: frozenset({OrderStatus.PAYMENT_CHARGED, OrderStatus.COMPENSATING}),
    OrderStatus.PAYMENT_CHARGED: frozenset({OrderStatus.SHIPPED, OrderStatus.COMPENSATING}),
    OrderStatus.COMPENSATING: frozenset({OrderStatus.CANCELLED, OrderStatus.FAILED}),
    OrderStatus.SHIPPED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.FAILED: frozenset(),
}


def check_transition(current: OrderStatus, target: OrderStatus) -> bool:
    """True when the order must move to `target`; False when it is already there (a retry).

    Raises InvalidStatusTransition for a move the status machine forbids.
    """
    if current == target:
        return False
    if target not in _ALLOWED_TRANSITIONS[current]:
        raise InvalidStatusTransition(f"order cannot go from {current} to {target}")
    return True


class FailureReason(StrEnum):
    OUT_OF_STOCK = "OUT_OF_STOCK"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    SHIPPING_UNAVAILABLE = "SHIPPING_UNAVAILABLE"
    CUSTOMER_CANCELLED = "CUSTOMER_CANCELLED"
    WORKFLOW_CANCELLED = "WORKFLOW_CANCELLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True, slots=True)
class RequestedItem:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class PricedLine:
    sku: str
    quantity: int
    unit_price: Money

    @property
    def total(self) -> Money:
        return self.unit_price.times(self.quantity)


class DuplicateSku(InvalidOrder):
    """An order names a SKU on more than one line; `skus`: those SKUs, sorted."""

    code = "DUPLICATE_SKU"

    def __init__(self, skus: list[str]) -> None:
        super().__init__("each SKU may appear once per order: " + ", ".join(skus))
        self.skus = skus


def check_one_line_per_sku(skus: Iterable[str]) -> None:
    """One line per SKU: raises DuplicateSku naming every SKU that appears more than once.

    The one home of the rule: the API checks it while validating a request (its 422), pricing again.
    """
    seen: set[str] = set()
    repeated: set[str] = set()
    for sku in skus:
        (repeated if sku in seen else seen).add(sku)
    if repeated:
        raise DuplicateSku(sorted(repeated))


def price_order(
    items: Iterable[RequestedItem], catalog_prices: Mapping[str, Money]
) -> tuple[list[PricedLine], Money]:
    """Price the requested items from the catalogue: one currency, no duplicate or unknown SKU."""
    items = list(items)
    if not items:
        raise InvalidOrder("an order needs at least one item")
    skus = [item.sku for item in items]
    check_one_line_per_sku(skus)
    unknown = [sku for sku in skus if sku not in catalog_prices]
    if unknown:
        raise UnknownProduct(unknown)
    lines = []
    for item in items:
        if item.quantity < 1:
            raise InvalidOrder(f"quantity of {item.sku} must be at least 1")
        lines.append(PricedLine(item.sku, item.quantity, catalog_prices[item.sku]))
    total = lines[0].total
    for line in lines[1:]:
        total = total + line.total
    return lines, total


def workflow_id_for(order_id: str) -> str:
    """One saga per order: the workflow id is derived from the order id alone."""
    return f"order-{order_id}"


@dataclass(frozen=True, slots=True)
class ShippingAddress:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2
    line2: str | None = None


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """The command to place an order; `order_id` is chosen by the caller (API) for idempotency."""

    order_id: str
    customer_id: str
    customer_email: str
    items: tuple[RequestedItem, ...]
    payment_token: str
    shipping_address: ShippingAddress
