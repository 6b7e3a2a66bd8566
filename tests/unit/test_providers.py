"""The simulated payment provider and carrier are deterministic by input and honour idempotency keys."""

from __future__ import annotations

import pytest

from activities.providers import (
    ChargeRequest,
    ShipmentRequest,
    SimulatedCarrier,
    SimulatedPaymentGateway,
)
from domain.errors import PaymentDeclined, ShippingUnavailable, TransientProviderError

pytestmark = pytest.mark.unit


async def test_tok_ok_charges_once_per_idempotency_key() -> None:
    gateway = SimulatedPaymentGateway()
    first = await gateway.charge(ChargeRequest("o1:charge", 500, "EUR", "tok_ok"))
    again = await gateway.charge(ChargeRequest("o1:charge", 500, "EUR", "tok_ok"))
    assert first == again and first.startswith("ch_")
    assert list(gateway.charges) == ["o1:charge"]


@pytest.mark.parametrize("token", ["tok_declined", "tok_unknown"])
async def test_declined_and_unknown_tokens_are_declined(token: str) -> None:
    gateway = SimulatedPaymentGateway()
    with pytest.raises(PaymentDeclined):
        await gateway.charge(ChargeRequest("o1:charge", 500, "EUR", token))
    assert gateway.charges == {}


async def test_tok_flaky_fails_twice_per_key_then_succeeds() -> None:
    gateway = SimulatedPaymentGateway()
    request = ChargeRequest("o1:charge", 500, "EUR", "tok_flaky")
    for _ in range(2):
        with pytest.raises(TransientProviderError):
            await gateway.charge(request)
    assert (await gateway.charge(request)).startswith("ch_")
    with pytest.raises(TransientProviderError):  # another order starts its own count
        await gateway.charge(ChargeRequest("o2:charge", 500, "EUR", "tok_flaky"))


async def test_carrier_refuses_country_zz_and_ships_elsewhere_deterministically() -> None:
    carrier = SimulatedCarrier()
    with pytest.raises(ShippingUnavailable):
        await carrier.create_shipment(ShipmentRequest("o1:shipment", "ZZ", (("A", 1),)))
    first = await carrier.create_shipment(ShipmentRequest("o2:shipment", "FR", (("A", 1),)))
    again = await carrier.create_shipment(ShipmentRequest("o2:shipment", "FR", (("A", 1),)))
    assert first == again
    assert first.tracking_number.startswith("TRK")
