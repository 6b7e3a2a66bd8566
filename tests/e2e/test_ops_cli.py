"""The ops CLI (`order-saga`) against a live API process, a real worker, Temporal and database."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from typer.testing import CliRunner

from infra.settings import Settings
from ops import demo
from ops.api_client import OrdersApi
from ops.cli import app
from tests.conftest import SagaHarness
from tests.support import ROOT, add_product, free_port

pytestmark = pytest.mark.e2e

ORDER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def db_backend() -> str:
    return "sqlite"


@pytest.fixture
async def api_url(saga: SagaHarness) -> AsyncIterator[str]:
    """`python -m entrypoints.api` on a free port, wired to the harness's database and task queue."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "entrypoints.api",
        cwd=ROOT,
        env={
            "DATABASE_URL": saga.settings.database_url,
            "TEMPORAL_ADDRESS": saga.client.service_client.config.target_host,
            "TEMPORAL_TASK_QUEUE": saga.task_queue,
            "API_PORT": str(port),
            "LOG_LEVEL": "WARNING",
        },
        stdout=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(30):
            while True:
                try:
                    if (await http.get("/readyz")).status_code in (200, 503):
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        server.terminate()
        await server.wait()


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    # The CLI blocks: run it off the event loop that runs the worker.
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    return result.exit_code, result.output


async def test_orders_place_show_list_and_a_refused_cancel(saga: SagaHarness, api_url: str) -> None:
    await add_product(saga.database.sessions, "SKU-CLI", on_hand=3)

    code, output = await cli(
        "orders", "place", "--item", "SKU-CLI:2", "--customer-id", "cli-1", "--api-url", api_url
    )
    assert code == 0, output
    match = ORDER_ID.search(output)
    assert match is not None, output
    order_id = match.group()

    async with asyncio.timeout(30):
        while True:
            code, shown = await cli("orders", "show", order_id, "--api-url", api_url)
            assert code == 0, shown
            if "SHIPPED" in shown.splitlines()[0]:
                break
            await asyncio.sleep(0.2)
    assert "SKU-CLI" in shown and "PAYMENT_CHARGED" in shown and "25.00 EUR" in shown

    code, listed = await cli("orders", "list", "--customer-id", "cli-1", "--api-url", api_url)
    assert code == 0 and order_id in listed

    code, refused = await cli("orders", "cancel", order_id, "--api-url", api_url)
    assert code == 1
    assert "409" in refused and "SHIPPED" in refused


async def test_outbox_status_reports_the_published_event(saga: SagaHarness, api_url: str) -> None:
    await add_product(saga.database.sessions, "SKU-CLI", on_hand=3)
    code, output = await cli(
        "orders", "place", "--item", "SKU-CLI:1", "--token", "tok_declined", "--api-url", api_url
    )
    assert code == 0, output

    env = {"DATABASE_URL": saga.settings.database_url}
    async with asyncio.timeout(30):
        while True:
            code, status = await cli("outbox", "status", env=env)
            assert code == 0, status
            if re.search(r"pending\s*│\s*1\b", status):  # no relay runs here: OrderCancelled waits
                break
            await asyncio.sleep(0.2)
    assert "oldest pending:" in status and "s old" in status


async def test_an_unreachable_api_is_a_clear_error() -> None:
    code, output = await cli("orders", "show", "x", "--api-url", "http://127.0.0.1:9")
    assert code == 1
    assert "not reachable" in output


async def test_the_demos_cancel_path_ends_cancelled(saga: SagaHarness, api_url: str) -> None:
    """`make demo`'s customer cancel must not race the saga: its token holds the charge until the cancel
    has landed, so the order ends CANCELLED (never SHIPPED) however fast or slow the machine is."""
    path = next(path for path in demo.PATHS if path.cancel)
    assert path.token == "tok_hold"
    for sku, quantity in path.items:
        await add_product(saga.database.sessions, sku, on_hand=quantity)

    with OrdersApi(api_url, Settings.DEVELOPMENT_API_KEY) as api:
        order_id, note = await asyncio.to_thread(demo.place_path, api, path)
        assert note == " -> cancel accepted"
        async with asyncio.timeout(60):
            while True:
                order = await asyncio.to_thread(api.order, order_id)
                if order["status"] in demo.TERMINAL:
                    break
                await asyncio.sleep(0.2)

    assert order["status"] == "CANCELLED", order
    assert order["failure"]["reason"] == "CUSTOMER_CANCELLED"
    # Whatever step the cancel met, nothing stays charged.
    charged = sum(
        p["amount"] for p in order["payments"] if p["kind"] == "charge" and p["status"] == "succeeded"
    )
    refunded = sum(
        p["amount"] for p in order["payments"] if p["kind"] == "refund" and p["status"] == "succeeded"
    )
    assert charged == refunded, order["payments"]
