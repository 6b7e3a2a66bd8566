"""`order-saga`: the operator's command line.

order-saga orders place --item SKU-A:2 --token tok_ok --country DE
order-saga orders show ORDER_ID | orders list [--status S] | orders cancel ORDER_ID
order-saga dlq list|groups|show|redrive REACTOR ... (ids, --group, filters or --all; --dry-run)
order-saga replay plan|run REACTOR --mode backfill|reapply --order ID | replay status|resume|list
order-saga outbox status | queues migrate REACTOR... | retention run
order-saga timeline ORDER_ID | asyncapi
order-saga demo
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from infra.db import open_database
from infra.retention import RetentionReport, run_retention
from infra.settings import load_settings
from messaging.outbox_status import OutboxStatus, outbox_status
from ops import demo, dlq_commands, queues, replay_commands, terminal
from ops.api_client import ApiError, OrdersApi
from ops.demo import amount_text
from ops.inspect import asyncapi_command, timeline_command

# Wide enough for full order ids when the output is piped (rich assumes 80 columns then).
console = terminal.console(120)
app = typer.Typer(help="Operate the order saga service.", no_args_is_help=True)
orders_app = typer.Typer(help="Place, follow and cancel orders (through the HTTP API).", no_args_is_help=True)
outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)
retention_app = typer.Typer(
    help="Bounded tables: delete rows older than their retention.", no_args_is_help=True
)
app.add_typer(orders_app, name="orders")
app.add_typer(dlq_commands.app, name="dlq", help="Dead letters of a reactor: list, group, redrive.")
app.add_typer(replay_commands.app, name="replay")
app.add_typer(outbox_app, name="outbox")
app.add_typer(queues.app, name="queues")
app.add_typer(retention_app, name="retention")
app.command("timeline")(timeline_command)
app.command("asyncapi")(asyncapi_command)

ApiUrl = Annotated[str | None, typer.Option(help="Base URL of the API (default: API_HOST:API_PORT).")]
ApiKey = Annotated[str | None, typer.Option(help="Bearer key (default: the development key).")]


@contextmanager
def _api(api_url: str | None, api_key: str | None) -> Iterator[OrdersApi]:
    try:
        with OrdersApi.from_settings(load_settings(), api_url, api_key) as api:
            yield api
    except ApiError as err:
        console.print(f"error: {err}", style="red")
        raise typer.Exit(1) from err


def _parse_item(text: str) -> dict[str, Any]:
    sku, _, quantity = text.partition(":")
    if not sku or not quantity.isdigit():
        raise typer.BadParameter(f"expected SKU:QUANTITY, got {text!r}")
    return {"sku": sku, "quantity": int(quantity)}


@orders_app.command("place")
def place(
    item: Annotated[list[str], typer.Option(help="SKU:QUANTITY, repeatable.")],
    customer_id: str = "cust-cli",
    email: str = "customer@example.com",
    token: Annotated[str, typer.Option(help="tok_ok, tok_declined, tok_flaky or tok_hold.")] = "tok_ok",
    country: Annotated[str, typer.Option(help="ISO 3166 alpha-2; ZZ cannot be shipped to.")] = "DE",
    idempotency_key: Annotated[str | None, typer.Option(help="Default: a new random key.")] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Place an order; prints its id."""
    order = {
        "customer": {"id": customer_id, "email": email},
        "items": [_parse_item(text) for text in item],
        "payment_token": token,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Analytical Way",
            "city": "Berlin",
            "postal_code": "10115",
            "country": country,
        },
    }
    with _api(api_url, api_key) as api:
        accepted = api.place_order(order, idempotency_key)
    console.print(f"order {accepted['order_id']} accepted: {accepted['status']}")


@orders_app.command("show")
def show(order_id: str, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """An order: status, lines, payments, shipment and status history."""
    with _api(api_url, api_key) as api:
        order = api.order(order_id)
    console.print(f"{order['order_id']}  {order['status']}  {_money(order)}")
    if order.get("failure"):
        console.print(f"failure: {order['failure']}")
    lines = Table("sku", "quantity", "unit price", "total", title="lines")
    for line in order["lines"]:
        lines.add_row(
            line["sku"],
            str(line["quantity"]),
            amount_text(line["unit_price"], order["currency"]),
            amount_text(line["line_total"], order["currency"]),
        )
    history = Table("at", "status", "reason", title="status history")
    for change in order["status_history"]:
        history.add_row(change["at"], change["status"], change.get("reason") or "")
    console.print(lines, history)
    for payment in order.get("payments", []):
        amount = amount_text(payment.get("amount"), payment.get("currency", ""))
        detail = payment.get("failure_detail") or payment.get("reference") or ""
        console.print(f"payment: {payment.get('kind')} {amount} {payment.get('status')} {detail}".rstrip())
    if order.get("shipment"):
        console.print(f"shipment: {order['shipment']}")


@orders_app.command("list")
def list_orders(
    status: str | None = None,
    customer_id: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Orders, newest first; pass --cursor to page on."""
    with _api(api_url, api_key) as api:
        page = api.orders(status=status, customer_id=customer_id, limit=limit, cursor=cursor)
    table = Table("order", "customer", "status", "total", "created")
    for order in page["items"]:
        table.add_row(
            order["order_id"], order["customer_id"], order["status"], _money(order), order["created_at"]
        )
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"next page: --cursor {page['next_cursor']}")


@orders_app.command("cancel")
def cancel(
    order_id: str,
    reason: str = "cancelled by an operator",
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Ask the saga to cancel; refused once shipping has started."""
    with _api(api_url, api_key) as api:
        outcome = api.cancel(order_id, reason)
    console.print(f"cancel accepted: {outcome}")


@outbox_app.command("status")
def status() -> None:
    """Pending and published events, the oldest pending one and the latest publish errors."""
    report = asyncio.run(_outbox_status())
    table = Table("status", "events")
    for name, count in sorted(report.counts.items()):
        table.add_row(name, str(count))
    console.print(table)
    age = report.oldest_pending_age_seconds
    console.print(f"oldest pending: {'none' if age is None else f'{age:.1f}s old'}")
    for failing in report.failing:
        console.print(
            Text(failing.event_id, style="yellow"), f"attempts={failing.attempts}: {failing.last_error}"
        )


async def _outbox_status() -> OutboxStatus:
    database = open_database(load_settings())
    try:
        async with database.sessions() as session:
            return await outbox_status(session)
    finally:
        await database.dispose()


@retention_app.command("run")
def retention_run() -> None:
    """Run the retention once now (what the Temporal Schedule does every RETENTION_INTERVAL_MINUTES)."""
    report = asyncio.run(_retention_run())
    table = Table("table", "rows deleted")
    for name, count in report.deleted.items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(f"{report.batches} batches in {round(report.seconds, 2)} s")


async def _retention_run() -> RetentionReport:
    settings = load_settings()
    database = open_database(settings)
    try:
        return await run_retention(database.sessions, settings)
    finally:
        await database.dispose()


@app.command("demo")
def run_demo(api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Seed a catalogue, place an order down every path, show outcomes and the reactors' effects."""
    with _api(api_url, api_key) as api:
        demo.run(api, console, load_settings().temporal_ui_url)


def _money(order: dict[str, Any]) -> str:
    return amount_text(order.get("total_amount", order.get("total", 0)), order.get("currency", ""))
