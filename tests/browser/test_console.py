"""The operator console in Chromium, against the real processes: sign in, find an order placed through
the API, read its journey (saga, outbox and reactor lanes), cancel an order from its page, watch health.

Run with `--update-screenshots` to refresh docs/screenshots (the README shows them).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from ops.launcher import LocalStack
from reactors.registry import REACTORS
from tests.browser.conftest import Shop, sign_in

pytestmark = pytest.mark.browser

REACTOR_NAMES = {reactor.name for reactor in REACTORS}
# Activity tasks: charge payment, create shipment; local steps (lean-saga): reserve inventory, mark shipped.
SAGA_STEPS = 2
LOCAL_STEPS = 2
WAIT_MS = 30_000


async def test_an_operator_follows_an_order_across_the_saga_and_the_reactors(
    stack: LocalStack, shop: Shop, page: Page, screenshots: Path
) -> None:
    customer = "cust-" + uuid.uuid4().hex[:6]
    await shop.add_product("SKU-JOURNEY", stock=20)
    # `tok_flaky` fails twice before the charge goes through: the journey shows the attempts.
    shipped = await shop.place({"SKU-JOURNEY": 2}, customer_id=customer, token="tok_flaky")
    declined = await shop.place({"SKU-JOURNEY": 1}, customer_id=customer, token="tok_declined")
    await shop.wait_until_handled(shipped, REACTOR_NAMES)
    await shop.wait_until_handled(declined, {"notification", "analytics"})

    await sign_in(page, stack.api_url, "/console/orders")
    await page.fill("input[name=customer_id]", customer)
    await page.click("form.filters button[type=submit]")
    rows = page.locator("[data-testid=orders] tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("FAILED")  # newest first
    await page.screenshot(path=str(screenshots / "orders.png"), full_page=True)

    await page.click(f"a:text-is('{shipped}')")
    await expect(page.get_by_test_id("order-status")).to_have_text("SHIPPED")
    saga = page.locator('[data-lane="saga"]')
    await expect(saga.locator('[data-kind="step.completed"]')).to_have_count(SAGA_STEPS)
    await expect(saga.locator('[data-kind="local_step.completed"]')).to_have_count(LOCAL_STEPS)
    await expect(
        saga.locator('[data-kind="step.completed"]', has_text="charge_payment (3 attempts")
    ).to_have_count(1)
    outbox = page.locator('[data-lane="outbox"]')
    await expect(outbox.locator('[data-kind="event.published"]')).to_have_count(1)
    for name in REACTOR_NAMES:
        lane = page.locator(f'[data-lane="reactor:{name}"]')
        await expect(lane.locator('[data-kind="delivery.processed"]')).to_have_count(1)
    link = page.get_by_test_id("temporal-link")
    assert (await link.get_attribute("href") or "").endswith(f"/workflows/order-{shipped}")
    await expect(page.get_by_test_id("cancel")).to_have_count(0)  # shipped: too late to cancel
    await page.screenshot(path=str(screenshots / "order-journey.png"), full_page=True)

    # A declined charge: the saga's lane shows the failed step and the compensations that unwound it.
    await page.goto(f"{stack.api_url}/console/orders/{declined}")
    await expect(page.get_by_test_id("order-status")).to_have_text("FAILED")
    failed_saga = page.locator('[data-lane="saga"]')
    await expect(failed_saga.locator('[data-kind="step.failed"]')).to_have_count(1)
    await expect(failed_saga.locator('[data-kind="compensation.completed"]')).not_to_have_count(0)


async def test_an_operator_cancels_an_order_from_its_page(stack: LocalStack, shop: Shop, page: Page) -> None:
    await shop.add_product("SKU-CANCEL", stock=5)
    await sign_in(page, stack.api_url, "/console/orders")
    # `tok_hold` holds the charge for 5 s: the cancel lands before shipping.
    held = await shop.place({"SKU-CANCEL": 1}, customer_id="cust-cancel", token="tok_hold")
    await page.goto(f"{stack.api_url}/console/orders/{held}")
    page.once("dialog", lambda dialog: dialog.accept())
    async with page.expect_request(f"**/console/orders/{held}/cancel") as sent:
        await page.get_by_test_id("cancel").click()
    # htmx sends the session's CSRF token as a header on every request it makes (set on <body>).
    assert (await sent.value).headers.get("x-csrf-token")
    await expect(page.get_by_test_id("cancel-outcome")).to_contain_text("Cancel accepted")
    # The page refreshes itself while the order is in flight.
    await expect(page.get_by_test_id("order-status")).to_have_text("CANCELLED", timeout=WAIT_MS)
    await expect(page.locator('[data-lane="saga"] [data-kind="cancel.accepted"]')).to_have_count(1)
    assert await shop.status(held) == "CANCELLED"


async def test_health_shows_the_outbox_and_every_reactor(
    stack: LocalStack, shop: Shop, page: Page, screenshots: Path
) -> None:
    await sign_in(page, stack.api_url, "/console/health")
    reactors = page.locator("[data-testid=reactors] tbody tr")
    await expect(reactors).to_have_count(len(REACTOR_NAMES))
    for name in REACTOR_NAMES:
        consumers = page.locator(f'tr[data-reactor="{name}"] td').nth(4)
        await expect(consumers).not_to_have_text("0")
    await expect(page.get_by_test_id("outbox-pending")).to_have_text("0", timeout=WAIT_MS)
    await page.screenshot(path=str(screenshots / "health.png"), full_page=True)
