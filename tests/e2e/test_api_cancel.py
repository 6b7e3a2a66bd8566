"""POST /orders/{id}/cancel: accepted until shipping starts, refused (409) from then on."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e


async def cancel(api: ApiHarness, order_id: str, reason: str | None = None) -> tuple[int, dict[str, object]]:
    body = {"reason": reason} if reason else None
    response = await api.http.post(f"/orders/{order_id}/cancel", json=body, headers=auth("shop"))
    return response.status_code, response.json()


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_cancel_before_shipping_compensates_and_ends_cancelled(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    # Hold the saga at the payment provider: stock is reserved, nothing has shipped.
    api.gateway.gate.close()
    order_id = await api.place_ok(order_body({"SKU-A": 3}))
    await asyncio.wait_for(api.gateway.gate.reached.wait(), 10)

    status, accepted = await cancel(api, order_id, "changed my mind")
    api.gateway.gate.open()

    assert status == 202, accepted
    assert accepted["order_id"] == order_id
    assert accepted["status"] == "INVENTORY_RESERVED"
    order = await api.wait_for(order_id)
    assert order["status"] == "CANCELLED"
    assert order["failure"] == {"reason": "CUSTOMER_CANCELLED", "detail": "changed my mind"}
    assert order["shipment"] is None
    # The charge that was in flight went through, then was refunded; the stock is back.
    assert [(p["kind"], p["status"]) for p in order["payments"]] == [
        ("charge", "succeeded"),
        ("refund", "succeeded"),
    ]
    product = (await api.http.get("/products/SKU-A", headers=auth("ops"))).json()
    assert (product["on_hand"], product["reserved"]) == (10, 0)


async def test_cancel_once_shipping_has_started_is_refused(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    api.carrier.gate.close()
    order_id = await api.place_ok(order_body({"SKU-A": 1}))
    await asyncio.wait_for(api.carrier.gate.reached.wait(), 10)

    status, problem = await cancel(api, order_id)
    api.carrier.gate.open()

    assert status == 409, problem
    assert problem["type"] == "urn:order-saga:problem:cancel-refused"
    assert "shipping has started" in str(problem["detail"])
    assert problem["order_status"] == "PAYMENT_CHARGED"
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"


async def test_cancel_after_shipping_is_refused(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    order_id = await api.place_ok(order_body({"SKU-A": 1}))
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"

    status, problem = await cancel(api, order_id)

    assert status == 409, problem
    assert problem["detail"] == "the order is already SHIPPED"
    assert problem["order_status"] == "SHIPPED"
    assert (await api.order(order_id))["status"] == "SHIPPED"


async def test_cancel_of_an_unknown_order_is_not_found(api: ApiHarness) -> None:
    unknown = await cancel(api, "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10")
    not_an_id = await cancel(api, "not-an-order-id")

    assert unknown[0] == not_an_id[0] == 404
    assert unknown[1]["type"] == "urn:order-saga:problem:order-not-found"
