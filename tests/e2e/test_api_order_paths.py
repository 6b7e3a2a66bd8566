"""Every simulated path of the saga, driven over HTTP, reaches its final status; orders read back."""

from __future__ import annotations

import asyncio

import pytest

from domain.model import workflow_id_for
from tests.e2e.conftest import ApiHarness, auth, order_body
from tests.workflow.webui import activity_summaries, current_details

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_every_simulated_path_reaches_its_final_status(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=100, unit_price=1_000)
    await api.add_product("SKU-B", stock=100, unit_price=250)
    await api.add_product("SKU-SCARCE", stock=1)
    paths = {
        "ok": (order_body({"SKU-A": 2, "SKU-B": 1}), "SHIPPED", None),
        "declined": (order_body({"SKU-A": 1}, token="tok_declined"), "FAILED", "PAYMENT_DECLINED"),
        "flaky": (order_body({"SKU-B": 3}, token="tok_flaky"), "SHIPPED", None),
        "unserviceable": (order_body({"SKU-A": 1}, country="ZZ"), "FAILED", "SHIPPING_UNAVAILABLE"),
        "out_of_stock": (order_body({"SKU-SCARCE": 2}), "FAILED", "OUT_OF_STOCK"),
    }
    # All five at once: the API and the sagas serve concurrent orders.
    order_ids = await asyncio.gather(*(api.place_ok(body) for body, _, _ in paths.values()))
    by_path = dict(zip(paths, order_ids, strict=True))
    finals = dict(
        zip(paths, await asyncio.gather(*(api.wait_for(order_id) for order_id in order_ids)), strict=True)
    )

    for path, (_, status, reason) in paths.items():
        order = finals[path]
        assert order["status"] == status, (path, order)
        assert (order["failure"] or {}).get("reason") == reason, (path, order)
        assert order["status_history"][0]["status"] == "PLACED"
        assert order["status_history"][-1]["status"] == status

    shipped = finals["ok"]
    assert shipped["total_amount"] == 2 * 1_000 + 250
    assert [(line["sku"], line["quantity"], line["line_total"]) for line in shipped["lines"]] == [
        ("SKU-A", 2, 2_000),
        ("SKU-B", 1, 250),
    ]
    assert [(p["kind"], p["amount"], p["status"]) for p in shipped["payments"]] == [
        ("charge", 2_250, "succeeded")
    ]
    assert shipped["shipment"]["status"] == "created" and shipped["shipment"]["tracking_number"]
    # The API starts the saga with what the Temporal Web UI shows: the priced order and its console page.
    saga = api.temporal_env.client.get_workflow_handle(workflow_id_for(by_path["ok"]))
    assert activity_summaries(await saga.fetch_history())[:2] == [
        "reserve 2 x SKU-A, 1 x SKU-B",
        "charge 22.50 EUR",
    ]
    console = f"{api.settings.api_public_url}/console/orders/{by_path['ok']}"
    assert f"[Open the order in the console]({console})" in await current_details(saga)
    assert [change["status"] for change in shipped["status_history"]] == [
        "PLACED",
        "INVENTORY_RESERVED",
        "PAYMENT_CHARGED",
        "SHIPPED",
    ]

    # The flaky provider failed twice before it succeeded, yet there is one charge, never refunded.
    flaky = finals["flaky"]
    assert [(p["kind"], p["status"]) for p in flaky["payments"]] == [("charge", "succeeded")]
    assert f"{by_path['flaky']}:charge" in api.gateway.charges
    assert f"{by_path['flaky']}:refund" not in api.gateway.refunds

    # Shipping failed after the charge: the saga refunded it.
    unserviceable = finals["unserviceable"]
    assert [(p["kind"], p["status"]) for p in unserviceable["payments"]] == [
        ("charge", "succeeded"),
        ("refund", "succeeded"),
    ]

    declined = finals["declined"]
    assert [(p["kind"], p["status"]) for p in declined["payments"]] == [("charge", "declined")]
    assert declined["shipment"] is None

    # Compensation gave back what the failed orders held; the shipped ones took theirs.
    stock = (await api.http.get("/products/SKU-A", headers=auth("ops"))).json()
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (98, 0, 98)
    scarce = (await api.http.get("/products/SKU-SCARCE", headers=auth("ops"))).json()
    assert (scarce["on_hand"], scarce["reserved"]) == (1, 0)
