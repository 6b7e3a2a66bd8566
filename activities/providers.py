"""Ports to the outside world (payment provider, carrier) and their built-in simulations.

The simulations are deterministic by input, like a payment provider's test cards, so every path
of the saga can be driven from outside:

- payment token `tok_ok` succeeds; `tok_declined` is declined; `tok_flaky` fails transiently twice
  for a given idempotency key, then succeeds; `tok_hold` holds each charge attempt for HOLD_SECONDS
  (5 s), then succeeds, so a cancel sent right after placing lands while the charge is in flight on
  any machine (`make demo`); any other token is declined as unknown.
- a shipping address in country `ZZ` cannot be served; every other country ships.

Both honour idempotency keys as real providers do: the same key never charges or ships twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Protocol

from domain.errors import PaymentDeclined, ShippingUnavailable, TransientProviderError

TOKEN_OK = "tok_ok"
TOKEN_DECLINED = "tok_declined"
TOKEN_FLAKY = "tok_flaky"
TOKEN_HOLD = "tok_hold"
# Well inside the charge step's start-to-close timeout (15 s), long enough for any cancel to land.
HOLD_SECONDS = 5.0
FLAKY_FAILURES_BEFORE_SUCCESS = 2
UNSERVICEABLE_COUNTRY = "ZZ"


def _reference(prefix: str, key: str) -> str:
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    amount: int
    currency: str
    token: str


@dataclass(frozen=True)
class RefundRequest:
    idempotency_key: str
    charge_reference: str
    amount: int
    currency: str


@dataclass(frozen=True)
class ShipmentRequest:
    idempotency_key: str
    country: str
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ShipmentReceipt:
    carrier: str
    tracking_number: str


class PaymentGateway(Protocol):
    async def charge(self, request: ChargeRequest) -> str:
        """Charge and return the provider's reference. Raises PaymentDeclined (final) or
        TransientProviderError (retry with the same key)."""

    async def refund(self, request: RefundRequest) -> str:
        """Refund a charge and return the refund's reference."""

    async def find_charge(self, idempotency_key: str) -> str | None:
        """The reference of a successful charge made under this key, or None (nothing was charged)."""


class ShippingCarrier(Protocol):
    async def create_shipment(self, request: ShipmentRequest) -> ShipmentReceipt:
        """Book a shipment. Raises ShippingUnavailable (final) or TransientProviderError."""

    async def cancel_shipment(self, tracking_number: str) -> None: ...


class SimulatedPaymentGateway:
    def __init__(self, latency_seconds: float = 0.0, hold_seconds: float = HOLD_SECONDS) -> None:
        self._latency_seconds = latency_seconds
        self.hold_seconds = hold_seconds
        self._attempts: dict[str, int] = {}
        # What the provider has done, by idempotency key; tests read it to count real charges.
        self.charges: dict[str, ChargeRequest] = {}
        self.refunds: dict[str, RefundRequest] = {}

    async def charge(self, request: ChargeRequest) -> str:
        if self._latency_seconds:
            await asyncio.sleep(self._latency_seconds)
        if request.token == TOKEN_HOLD:
            await asyncio.sleep(self.hold_seconds)
        attempt = self._attempts[request.idempotency_key] = self._attempts.get(request.idempotency_key, 0) + 1
        if request.token == TOKEN_DECLINED:
            raise PaymentDeclined("the card was declined")
        if request.token == TOKEN_FLAKY and attempt <= FLAKY_FAILURES_BEFORE_SUCCESS:
            raise TransientProviderError(f"payment provider unavailable (attempt {attempt})")
        if request.token not in (TOKEN_OK, TOKEN_FLAKY, TOKEN_HOLD):
            raise PaymentDeclined("unknown payment token")
        self.charges.setdefault(request.idempotency_key, request)
        return _reference("ch_", request.idempotency_key)

    async def refund(self, request: RefundRequest) -> str:
        self.refunds.setdefault(request.idempotency_key, request)
        return _reference("re_", request.idempotency_key)

    async def find_charge(self, idempotency_key: str) -> str | None:
        return _reference("ch_", idempotency_key) if idempotency_key in self.charges else None


class SimulatedCarrier:
    name = "simulated-post"

    def __init__(self) -> None:
        self.shipments: dict[str, ShipmentRequest] = {}
        self.cancelled: set[str] = set()

    async def create_shipment(self, request: ShipmentRequest) -> ShipmentReceipt:
        if request.country == UNSERVICEABLE_COUNTRY:
            raise ShippingUnavailable(f"no carrier serves country {request.country}")
        self.shipments.setdefault(request.idempotency_key, request)
        return ShipmentReceipt(self.name, _reference("TRK", request.idempotency_key).upper())

    async def cancel_shipment(self, tracking_number: str) -> None:
        self.cancelled.add(tracking_number)
