"""Strict input validation: every malformed order is a 422 problem that points at the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e

Body = dict[str, Any]


def changed(change: Callable[[Body], object]) -> Body:
    body = order_body({"SKU-A": 1})
    change(body)
    return body


def with_items(count: int) -> Body:
    return order_body({f"SKU-{n}": 1 for n in range(count)})


# (what is wrong, body, JSON pointer of the reported field)
INVALID_ORDERS: list[tuple[str, Body, str]] = [
    ("no lines", changed(lambda b: b.update(items=[])), "/items"),
    ("51 lines", with_items(51), "/items"),
    ("quantity 0", changed(lambda b: b["items"][0].update(quantity=0)), "/items/0/quantity"),
    ("quantity 1001", changed(lambda b: b["items"][0].update(quantity=1_001)), "/items/0/quantity"),
    ("quantity as text", changed(lambda b: b["items"][0].update(quantity="1")), "/items/0/quantity"),
    ("lower-case SKU", changed(lambda b: b["items"][0].update(sku="sku-a")), "/items/0/sku"),
    ("SKU twice", changed(lambda b: b["items"].append({"sku": "SKU-A", "quantity": 2})), "/items"),
    ("bad email", changed(lambda b: b["customer"].update(email="not-an-email")), "/customer/email"),
    (
        "unknown country",
        changed(lambda b: b["shipping_address"].update(country="XX")),
        "/shipping_address/country",
    ),
    (
        "lower-case country",
        changed(lambda b: b["shipping_address"].update(country="de")),
        "/shipping_address/country",
    ),
    ("empty token", changed(lambda b: b.update(payment_token="")), "/payment_token"),
    ("blank name", changed(lambda b: b["shipping_address"].update(name="   ")), "/shipping_address/name"),
    ("long city", changed(lambda b: b["shipping_address"].update(city="x" * 101)), "/shipping_address/city"),
    (
        "NUL in line1",
        changed(lambda b: b["shipping_address"].update(line1="a\x00b")),
        "/shipping_address/line1",
    ),
    ("unknown field", changed(lambda b: b.update(coupon="FREE")), "/coupon"),
    ("no customer", changed(lambda b: b.pop("customer")), "/customer"),
]


async def test_malformed_orders_are_422_problems_pointing_at_the_field(api: ApiHarness) -> None:
    for what, body, pointer in INVALID_ORDERS:
        response = await api.place(copy.deepcopy(body))

        assert response.status_code == 422, (what, response.text)
        assert response.headers["Content-Type"] == "application/problem+json", what
        problem = response.json()
        assert problem["type"] == "urn:order-saga:problem:validation-error", what
        assert pointer in [error["pointer"] for error in problem["errors"]], (what, problem)


async def test_a_body_that_is_not_json_is_a_422_problem(api: ApiHarness) -> None:
    headers = {**auth("shop"), "Idempotency-Key": "k1", "Content-Type": "application/json"}
    response = await api.http.post("/orders", content=b"{not json", headers=headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "json_invalid"


async def test_the_test_country_zz_is_accepted(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=1)

    response = await api.place(order_body({"SKU-A": 1}, country="ZZ"))

    assert response.status_code == 202, response.text
