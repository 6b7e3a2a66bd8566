"""The whole service as its real processes (`ops.launcher.LocalStack`: Temporal dev server, worker, relay,
reactors, SMTP sink, API) on a fresh PostgreSQL database, and Debian's Chromium driven by Playwright.

Playwright's own browser download is not possible here: Chromium comes from Debian (`apt-get install
chromium`, which `make test` does when it is missing) and is launched with `executable_path`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from infra.settings import Settings
from ops.launcher import LocalStack, StackOptions
from tests.support import empty_database, migrate

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_KEY = Settings.DEVELOPMENT_API_KEY  # the stack runs with the development key (every scope)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@dataclass
class Shop:
    """The stack's HTTP API, as a client of the service uses it."""

    http: httpx.AsyncClient

    async def add_product(self, sku: str, stock: int) -> None:
        body = {
            "sku": sku,
            "name": f"Product {sku}",
            "unit_price": 1_250,
            "currency": "EUR",
            "initial_stock": stock,
        }
        response = await self.http.post("/products", json=body)
        assert response.status_code == 201, response.text

    async def place(self, items: dict[str, int], *, customer_id: str, token: str = "tok_ok") -> str:
        body = {
            "customer": {"id": customer_id, "email": f"{customer_id}@example.com"},
            "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items.items()],
            "payment_token": token,
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "1 Analytical Way",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        }
        response = await self.http.post("/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 202, response.text
        return str(response.json()["order_id"])

    async def status(self, order_id: str) -> str:
        return str((await self.http.get(f"/orders/{order_id}")).json()["status"])

    async def timeline(self, order_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (await self.http.get(f"/orders/{order_id}/timeline")).json()[
            "entries"
        ]
        return entries

    async def wait_until_handled(self, order_id: str, reactors: set[str], seconds: float = 60) -> None:
        """Until the order's saga has ended and each of `reactors` processed its event."""
        async with asyncio.timeout(seconds):
            while True:
                entries = await self.timeline(order_id)
                ended = any(e["kind"] in ("workflow.completed", "workflow.failed") for e in entries)
                processed = {e["actor"] for e in entries if e["kind"] == "delivery.processed"}
                if ended and reactors <= processed:
                    return
                await asyncio.sleep(0.3)


async def sign_in(page: Page, base_url: str, path: str) -> None:
    """Open a console page: the console sends us to its sign-in form first, then back to the page."""
    await page.goto(f"{base_url}{path}")
    assert "/console/sign-in" in page.url
    await page.fill("#api_key", ADMIN_KEY)
    await page.click("main button[type=submit]")
    await page.wait_for_url(f"{base_url}{path}")
    await expect(page.get_by_test_id("operator")).to_have_text("local-developer")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("console-stack")
    async with empty_database("postgresql", workdir) as url:
        await migrate(url)
        local = LocalStack(StackOptions(workdir=workdir, database_url=url))
        try:
            await local.start()
            yield local
        finally:
            await local.stop()


@pytest.fixture(scope="module")
async def shop(stack: LocalStack) -> AsyncIterator[Shop]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=10) as http:
        yield Shop(http)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: `apt-get install -y chromium` (make test installs it)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies); fails the test if a page logged an error."""
    context = await browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    opened = await context.new_page()
    # Script errors and what the Content-Security-Policy blocked show up here: a page must have none.
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert errors == [], errors


@pytest.fixture
def screenshots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where the test saves its screenshots: docs/screenshots with --update-screenshots, else a temp dir."""
    if request.config.getoption("--update-screenshots"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path
