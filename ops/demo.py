"""`make demo`: seed a catalogue, place an order down every path, then show what happened.

Talks to a running local stack (`make run`) through its HTTP API only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from domain import money
from ops.api_client import ApiError, OrdersApi

CUSTOMER = {"id": "demo-customer", "email": "demo@example.com"}
CATALOGUE = [
    ("DEMO-MUG", "Saga mug", 1_200, 50),
    ("DEMO-TEE", "Compensation tee", 2_500, 50),
    ("DEMO-RARE", "Last one in stock", 9_900, 1),
]
TERMINAL = {"SHIPPED", "CANCELLED", "FAILED"}
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class DemoPath:
    name: str
    items: tuple[tuple[str, int], ...]
    token: str = "tok_ok"
    country: str = "DE"
    cancel: bool = False


PATHS = [
    DemoPath("happy", (("DEMO-MUG", 2), ("DEMO-TEE", 1))),
    DemoPath("flaky payment, retried", (("DEMO-TEE", 1),), token="tok_flaky"),
    DemoPath("payment declined", (("DEMO-MUG", 1),), token="tok_declined"),
    DemoPath("cannot ship to ZZ", (("DEMO-TEE", 1),), country="ZZ"),
    DemoPath("out of stock", (("DEMO-RARE", 3),)),
    # `tok_hold` holds the charge for 5 s: the cancel sent right after placing lands while the saga is
    # still before shipping, however busy or quiet the machine (with `tok_ok` it could ship first).
    DemoPath("cancelled by the customer", (("DEMO-MUG", 1),), token="tok_hold", cancel=True),
]


def _order_body(path: DemoPath) -> dict[str, Any]:
    return {
        "customer": CUSTOMER,
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in path.items],
        "payment_token": path.token,
        "shipping_address": {
            "name": "Demo Customer",
            "line1": "1 Saga Street",
            "city": "Berlin",
            "postal_code": "10115",
            "country": path.country,
        },
    }


def place_path(api: OrdersApi, path: DemoPath) -> tuple[str, str]:
    """Place the path's order (and cancel it at once on the cancel path): its id and a note."""
    accepted = api.place_order(_order_body(path))
    note = ""
    if path.cancel:
        try:
            api.cancel(accepted["order_id"], "changed my mind")
            note = " -> cancel accepted"
        except ApiError as err:
            note = f" -> cancel refused: {err.detail or err.title}"
    return str(accepted["order_id"]), note


def amount_text(minor_units: Any, currency: str) -> str:
    """An amount of minor units as domain.money formats it (1500 KWD -> "1.500 KWD"); one it cannot format
    (not an int, a currency it does not know) is shown as it came, in minor units, never guessed at."""
    try:
        return money.format_amount(minor_units, currency)
    except (money.UnsupportedCurrency, TypeError):
        return f"{minor_units} {currency} (minor units)"


def _wait_until(check: Any, what: str, console: Console) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            console.print(f"gave up waiting for {what} after {SETTLE_SECONDS:.0f}s", style="yellow")
            return
        time.sleep(0.3)


def run(api: OrdersApi, console: Console, temporal_ui_url: str) -> None:
    console.rule("1. catalogue")
    for sku, name, price, stock in CATALOGUE:
        api.ensure_product(sku, name, price, "EUR", stock)
        console.print(f"  {sku:<10} {name:<20} {amount_text(price, 'EUR'):>11}  stock {stock}")

    console.rule("2. orders, one per path")
    placed: dict[str, str] = {}
    for path in PATHS:
        order_id, note = place_path(api, path)
        placed[path.name] = order_id
        console.print(f"  {path.name:<28} {order_id}{note}")

    console.rule("3. outcomes")
    orders: dict[str, dict[str, Any]] = {}

    def all_settled() -> bool:
        for name, order_id in placed.items():
            orders[name] = api.order(order_id)
        return all(order["status"] in TERMINAL for order in orders.values())

    _wait_until(all_settled, "the sagas to finish", console)
    mails: dict[str, list[dict[str, Any]]] = {}

    def all_notified() -> bool:
        for name, order_id in placed.items():
            mails[name] = api.notifications(order_id)["items"]
        return all(mails.values())

    _wait_until(all_notified, "the notification reactor", console)
    table = Table("path", "status", "reason", "payments", "mail sent")
    for name, order in orders.items():
        payments = ", ".join(f"{p['kind']} {p['status']}" for p in order["payments"]) or "-"
        failure = (order.get("failure") or {}).get("reason", "")
        subjects = "; ".join(mail["subject"] for mail in mails.get(name, [])) or "-"
        table.add_row(name, order["status"], failure, payments, subjects)
    console.print(table)

    console.rule("4. the reactors' effects")
    loyalty = api.loyalty(CUSTOMER["id"])
    console.print(f"  loyalty: {CUSTOMER['id']} has {loyalty['points']} points")
    sales = api.sales(datetime.now(UTC).date().isoformat())
    console.print(
        f"  analytics today: {sales['orders_shipped']} orders shipped, {sales['orders_cancelled']} cancelled"
    )
    for sku in sales["skus"]:
        revenue = amount_text(sku["revenue"], sku["currency"])
        console.print(f"    {sku['sku']:<10} {sku['units']:>4} units  {revenue:>13}")
    console.print(
        f"\nFollow any order in the Temporal Web UI: {temporal_ui_url} (search OrderStatus, CustomerId)"
    )
