"""/products: the catalogue, its stock, and what orders in progress hold of it."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e

ADMIN = auth("ops")


async def test_a_product_is_created_listed_and_restocked(api: ApiHarness) -> None:
    created = await api.http.post(
        "/products",
        json={
            "sku": "SKU-A",
            "name": "Difference engine",
            "unit_price": 1_000,
            "currency": "EUR",
            "initial_stock": 5,
        },
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/products/SKU-A"
    assert created.json()["available"] == 5

    added = await api.http.post("/products/SKU-A/stock", json={"mode": "add", "quantity": 7}, headers=ADMIN)
    assert (added.json()["on_hand"], added.json()["available"]) == (12, 12)
    replaced = await api.http.post(
        "/products/SKU-A/stock", json={"mode": "set", "quantity": 3}, headers=ADMIN
    )
    assert replaced.json()["on_hand"] == 3

    duplicate = await api.http.post(
        "/products",
        json={"sku": "SKU-A", "name": "Again", "unit_price": 1, "currency": "EUR"},
        headers=ADMIN,
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["type"] == "urn:order-saga:problem:product-exists"

    for sku in ("SKU-C", "SKU-B"):
        await api.add_product(sku, stock=1)
    first = (await api.http.get("/products", params={"limit": 2}, headers=ADMIN)).json()
    rest = (await api.http.get("/products", params={"cursor": first["next_cursor"]}, headers=ADMIN)).json()
    assert [p["sku"] for p in first["items"]] == ["SKU-A", "SKU-B"]
    assert [p["sku"] for p in rest["items"]] == ["SKU-C"] and rest["next_cursor"] is None


async def test_stock_cannot_be_set_below_what_orders_hold(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    api.gateway.gate.close()  # the order holds its reservation while the charge waits
    order_id = await api.place_ok(order_body({"SKU-A": 4}))
    await asyncio.wait_for(api.gateway.gate.reached.wait(), 10)

    held = (await api.http.get("/products/SKU-A", headers=ADMIN)).json()
    refused = await api.http.post("/products/SKU-A/stock", json={"mode": "set", "quantity": 3}, headers=ADMIN)
    allowed = await api.http.post("/products/SKU-A/stock", json={"mode": "set", "quantity": 4}, headers=ADMIN)
    api.gateway.gate.open()

    assert (held["on_hand"], held["reserved"], held["available"]) == (10, 4, 6)
    assert refused.status_code == 409
    assert (refused.json()["on_hand"], refused.json()["reserved"]) == (10, 4)
    assert (allowed.json()["on_hand"], allowed.json()["available"]) == (4, 0)
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"
    shipped = (await api.http.get("/products/SKU-A", headers=ADMIN)).json()
    assert (shipped["on_hand"], shipped["reserved"]) == (0, 0)


async def test_unknown_products_are_not_found(api: ApiHarness) -> None:
    fetched = await api.http.get("/products/SKU-NOPE", headers=ADMIN)
    restocked = await api.http.post(
        "/products/SKU-NOPE/stock", json={"mode": "add", "quantity": 1}, headers=ADMIN
    )

    assert fetched.status_code == restocked.status_code == 404
    assert fetched.json()["type"] == "urn:order-saga:problem:product-not-found"
