"""Reading orders: visible at once after their 202, listed newest first with keyset pagination."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e


async def test_an_order_reads_back_right_after_its_202(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10, unit_price=1_999)
    api.gateway.gate.close()  # keep the saga from moving on while we look

    placed = await api.place(order_body({"SKU-A": 2}, customer_id="cust-7"))
    order = await api.order(placed.json()["order_id"])

    assert placed.status_code == 202
    assert order["status"] in ("PLACED", "INVENTORY_RESERVED")
    assert order["customer"] == {"id": "cust-7", "email": "cust-7@example.com"}
    assert (order["currency"], order["total_amount"]) == ("EUR", 3_998)
    assert order["lines"] == [
        {"line_no": 1, "sku": "SKU-A", "quantity": 2, "unit_price": 1_999, "line_total": 3_998}
    ]
    assert order["shipping_address"]["country"] == "DE"
    assert order["failure"] is None


async def test_an_unknown_order_is_not_found(api: ApiHarness) -> None:
    unknown = await api.http.get("/orders/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10", headers=auth("support"))
    not_an_id = await api.http.get("/orders/12345", headers=auth("support"))

    assert unknown.status_code == not_an_id.status_code == 404
    assert unknown.headers["Content-Type"] == "application/problem+json"
    assert unknown.json()["status"] == 404


async def pages(api: ApiHarness, **query: Any) -> list[list[dict[str, Any]]]:
    """Every page of GET /orders for `query`, following `next_cursor`."""
    result, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = await api.http.get("/orders", params=params, headers=auth("support"))
        assert response.status_code == 200, response.text
        page = response.json()
        result.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return result


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_orders_list_newest_first_in_keyset_pages(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=100)
    mine = [await api.place_ok(order_body({"SKU-A": 1}, customer_id="cust-a")) for _ in range(4)]
    declined = await api.place_ok(order_body({"SKU-A": 1}, customer_id="cust-a", token="tok_declined"))
    others = [await api.place_ok(order_body({"SKU-A": 1}, customer_id="cust-b")) for _ in range(2)]
    await asyncio.gather(*(api.wait_for(order_id) for order_id in [*mine, declined, *others]))

    paged = await pages(api, customer_id="cust-a", limit=2)

    assert [len(page) for page in paged] == [2, 2, 1]
    listed = [order["order_id"] for page in paged for order in page]
    # Placed one after another, so newest first is the reverse of placing order.
    assert listed == [declined, *reversed(mine)]
    keys = [(order["created_at"], order["order_id"]) for page in paged for order in page]
    assert keys == sorted(keys, reverse=True)
    assert {order["customer_id"] for page in paged for order in page} == {"cust-a"}

    failed = await pages(api, status="FAILED")
    assert [[order["order_id"] for order in page] for page in failed] == [[declined]]
    assert failed[0][0]["failure_reason"] == "PAYMENT_DECLINED"
    shipped_b = await pages(api, status="SHIPPED", customer_id="cust-b", limit=1)
    assert [order["order_id"] for page in shipped_b for order in page] == list(reversed(others))
    everything = await pages(api, limit=100)
    assert len(everything) == 1 and len(everything[0]) == 7


async def test_a_cursor_not_issued_by_the_api_is_refused(api: ApiHarness) -> None:
    response = await api.http.get("/orders", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=auth("support"))

    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:order-saga:problem:invalid-cursor"
    assert problem["errors"][0]["location"] == "query" and problem["errors"][0]["name"] == "cursor"
