"""The API's edge for money and mail: currencies the money module cannot handle are a 422 problem; a
customer's address is kept in a form every relay accepts (issue 11 parts 3 and 4)."""

from __future__ import annotations

from typing import Any

import pytest

from infra import models
from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e

ADMIN = auth("ops")


def product(currency: str, unit_price: int = 1_500) -> dict[str, Any]:
    return {"sku": "SKU-M", "name": "Money", "unit_price": unit_price, "currency": currency}


@pytest.mark.parametrize(
    ("currency", "reason"),
    [
        ("XAU", "XAU has no minor unit in ISO 4217"),  # gold
        ("XXX", "XXX has no minor unit in ISO 4217"),  # "no currency"
        ("XTS", "XTS has no minor unit in ISO 4217"),  # the testing code
        ("XDR", "XDR has no minor unit in ISO 4217"),  # a special drawing right
        ("ABC", "not an ISO 4217 currency code: ABC"),
    ],
)
async def test_a_currency_the_money_module_cannot_handle_is_a_clear_422(
    api: ApiHarness, currency: str, reason: str
) -> None:
    response = await api.http.post("/products", json=product(currency), headers=ADMIN)

    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["pointer"] == "/currency" and error["code"] == "currency_code"
    assert reason in error["detail"]


@pytest.mark.parametrize(
    ("currency", "exponent"), [("JPY", 0), ("EUR", 2), ("KWD", 3), ("CLF", 4), ("UYW", 4), ("CHE", 2)]
)
async def test_every_currency_with_a_minor_unit_is_accepted(
    api: ApiHarness, currency: str, exponent: int
) -> None:
    response = await api.http.post("/products", json=product(currency), headers=ADMIN)

    assert response.status_code == 201, (exponent, response.text)
    assert (response.json()["unit_price"], response.json()["currency"]) == (1_500, currency)


async def test_an_order_of_a_product_stored_in_a_currency_without_minor_unit_is_refused(
    api: ApiHarness,
) -> None:
    """A product row from before the check (XAU was accepted) cannot be priced: a 422, not a guess."""
    async with api.database.sessions() as session, session.begin():
        session.add(models.Product(sku="SKU-GOLD", name="Gold", unit_price=1, currency="XAU", on_hand=5))

    response = await api.place(order_body({"SKU-GOLD": 1}))

    assert response.status_code == 422, response.text
    assert "XAU has no minor unit" in response.json()["detail"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("ada@xn--bcher-kva.example", "ada@xn--bcher-kva.example"),  # the issue: it came back as bücher
        ("ada@bücher.example", "ada@xn--bcher-kva.example"),  # an ASCII form exists: every relay takes it
        ("Ada@Example.COM", "Ada@example.com"),  # the domain is case-insensitive, the local part is not
        ("jürgen@example.com", "jürgen@example.com"),  # needs SMTPUTF8 whatever its form: kept as given
    ],
)
async def test_the_customer_address_is_kept_in_a_form_relays_accept(
    api: ApiHarness, given: str, kept: str
) -> None:
    await api.add_product("SKU-A", stock=1)
    body = order_body({"SKU-A": 1})
    body["customer"]["email"] = given

    order_id = await api.place_ok(body)

    assert (await api.order(order_id))["customer"]["email"] == kept
