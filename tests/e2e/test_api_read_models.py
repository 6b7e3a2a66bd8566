"""The reactors' read models over HTTP: loyalty points, daily sales, an order's notifications.

The reactors fill these tables from order events; here rows are written directly, as a reactor would,
so that the endpoints are tested on their own.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.notification.models import Notification
from tests.e2e.conftest import ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e


async def test_loyalty_points_of_a_customer(api: ApiHarness) -> None:
    async with api.database.sessions() as session, session.begin():
        session.add(LoyaltyBalance(customer_id="cust-1", points=30))
        for number, points in enumerate((10, 20), start=1):
            session.add(
                LoyaltyLedgerEntry(
                    customer_id="cust-1",
                    event_id=f"event-{number}",
                    order_id=f"order-{number}",
                    points=points,
                    reason="order shipped",
                )
            )

    account = await api.http.get("/customers/cust-1/loyalty", headers=auth("support"))
    newcomer = await api.http.get("/customers/cust-2/loyalty", headers=auth("support"))
    latest = await api.http.get("/customers/cust-1/loyalty", params={"limit": 1}, headers=auth("support"))

    assert account.status_code == 200, account.text
    assert account.json()["points"] == 30
    assert [entry["order_id"] for entry in account.json()["entries"]] == ["order-2", "order-1"]
    assert newcomer.json() == {"customer_id": "cust-2", "points": 0, "entries": []}
    assert [entry["order_id"] for entry in latest.json()["entries"]] == ["order-2"]
    assert (await api.http.get("/customers/cust-1/loyalty", headers=auth("shop"))).status_code == 403


async def test_sales_of_a_day(api: ApiHarness) -> None:
    day = date(2026, 1, 5)
    async with api.database.sessions() as session, session.begin():
        session.add(DailyOrderCounts(day=day, orders_shipped=3, orders_cancelled=1))
        session.add(DailySkuSales(day=day, sku="SKU-A", currency="EUR", units=4, revenue=4_000))

    sales = await api.http.get("/analytics/sales", params={"date": "2026-01-05"}, headers=auth("ops"))
    quiet = await api.http.get("/analytics/sales", params={"date": "2026-01-06"}, headers=auth("ops"))
    malformed = await api.http.get("/analytics/sales", params={"date": "5 Jan"}, headers=auth("ops"))

    assert sales.status_code == 200, sales.text
    assert sales.json() == {
        "date": "2026-01-05",
        "orders_shipped": 3,
        "orders_cancelled": 1,
        "skus": [{"sku": "SKU-A", "currency": "EUR", "units": 4, "revenue": 4_000}],
    }
    assert quiet.json() == {"date": "2026-01-06", "orders_shipped": 0, "orders_cancelled": 0, "skus": []}
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["name"] == "date"


async def test_notifications_of_an_order(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=5)
    order_id = await api.place_ok(order_body({"SKU-A": 1}))
    async with api.database.sessions() as session, session.begin():
        session.add(
            Notification(
                event_id="event-1",
                event_type="order.shipped",
                order_id=order_id,
                recipient="cust-1@example.com",
                subject=f"Your order {order_id} has shipped",
                body="On its way.",
                message_id="<event-1@orders>",
                status="sent",
                send_attempts=1,
                sent_at=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
            )
        )

    found = await api.http.get(f"/orders/{order_id}/notifications", headers=auth("support"))
    unknown = await api.http.get(
        "/orders/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10/notifications", headers=auth("support")
    )

    assert found.status_code == 200, found.text
    assert found.json()["order_id"] == order_id
    assert [(n["event_type"], n["status"], n["recipient"]) for n in found.json()["items"]] == [
        ("order.shipped", "sent", "cust-1@example.com")
    ]
    assert unknown.status_code == 404
