"""Business failures. They are final: retrying cannot turn them into a success."""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the domain was broken. `code` is stable and machine-readable."""

    code = "DOMAIN_ERROR"


class OutOfStock(DomainError):
    code = "OUT_OF_STOCK"

    def __init__(self, sku: str, requested: int) -> None:
        super().__init__(f"not enough stock of {sku} for {requested} unit(s)")
        self.sku = sku
        self.requested = requested


class PaymentDeclined(DomainError):
    code = "PAYMENT_DECLINED"


class ShippingUnavailable(DomainError):
    code = "SHIPPING_UNAVAILABLE"


class UnknownProduct(DomainError):
    code = "UNKNOWN_PRODUCT"

    def __init__(self, skus: list[str]) -> None:
        super().__init__("unknown product(s): " + ", ".join(sorted(skus)))
        self.skus = sorted(skus)


class InvalidOrder(DomainError):
    code = "INVALID_ORDER"


class CurrencyMismatch(InvalidOrder):
    code = "CURRENCY_MISMATCH"


class InvalidStatusTransition(DomainError):
    code = "INVALID_STATUS_TRANSITION"


class TransientProviderError(Exception):
    """A provider failed in a way that a retry may fix (timeouts, 5xx, rate limits)."""


# The business failures an activity may raise; the workflow compensates on any of them.
BUSINESS_FAILURES: tuple[type[DomainError], ...] = (
    OutOfStock,
    PaymentDeclined,
    ShippingUnavailable,
)
