"""The console's recovery pages in Chromium, against the real processes: a dead-lettered group redriven
and processed, an order's events replayed to one reactor (and a re-apply the notification refuses).

Run with `--update-screenshots` to refresh docs/screenshots (the README shows them).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from sqlalchemy import delete, select

from contracts.envelope import parse_event
from contracts.orders import EVENT_TYPES, ORDER_SHIPPED_V1
from infra.db import open_database
from infra.settings import Settings
from messaging.broker import ConfirmedPublisher
from messaging.headers import DeadLetterHeaders
from messaging.models import OutboxEvent
from messaging.topology import Topology
from ops.launcher import LocalStack
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import InboxMessage
from tests.browser.conftest import Shop, sign_in

pytestmark = pytest.mark.browser

POINTS_PER_ORDER = 25  # 2 x 12.50 EUR
WAIT_MS = 30_000


async def dead_lettered_by_loyalty(settings: Settings, order_id: str) -> None:
    """Leave the state a delivery that loyalty gave up on leaves: none of its effect (no points, no inbox
    row) and the event waiting in loyalty's DLQ with the runtime's dead-letter headers."""
    database = open_database(settings)
    try:
        async with database.sessions() as session, session.begin():
            envelope = await session.scalar(
                select(OutboxEvent.envelope).where(
                    OutboxEvent.subject == order_id, OutboxEvent.event_type == ORDER_SHIPPED_V1.type
                )
            )
            assert envelope is not None
            body = json.dumps(envelope).encode()
            event = parse_event(body, EVENT_TYPES)
            assert LOYALTY.reset is not None
            await LOYALTY.reset([event], session)
            await session.execute(
                delete(InboxMessage).where(
                    InboxMessage.consumer == "loyalty", InboxMessage.message_id == event.id
                )
            )
    finally:
        await database.dispose()
    publisher = ConfirmedPublisher(settings, "test-dead-letter")
    try:
        await publisher.publish(
            exchange="",
            routing_key=Topology.from_settings(settings).dead_letter_queue("loyalty"),
            body=body,
            message_id=event.id,
            message_type=event.type,
            headers={
                DeadLetterHeaders.REACTOR: "loyalty",
                DeadLetterHeaders.REASON: f"gave up after 5 attempt(s): OperationalError: deadlock detected "
                f"on loyalty_balances for order {order_id}",
                DeadLetterHeaders.ATTEMPTS: 5,
                DeadLetterHeaders.AT: "2026-11-30T09:00:00+00:00",
                DeadLetterHeaders.EVENT_TYPE: event.type,
                DeadLetterHeaders.SUBJECT: order_id,
            },
        )
    finally:
        await publisher.close()


async def points(shop: Shop, customer_id: str) -> int:
    return int((await shop.http.get(f"/customers/{customer_id}/loyalty")).json()["points"])


async def test_an_operator_redrives_a_dead_lettered_group_and_sees_it_processed(
    stack: LocalStack, shop: Shop, page: Page, screenshots: Path
) -> None:
    customer = "cust-dlq-" + uuid.uuid4().hex[:6]
    await shop.add_product("SKU-DLQ", stock=20)
    orders = [await shop.place({"SKU-DLQ": 2}, customer_id=customer) for _ in range(2)]
    for order_id in orders:
        await shop.wait_until_handled(order_id, {"loyalty"})
        await dead_lettered_by_loyalty(stack.settings, order_id)
    assert await points(shop, customer) == 0

    await sign_in(page, stack.api_url, "/console/dead-letters?reactor=loyalty")
    groups = page.locator("[data-testid=groups] tbody tr")
    await expect(groups).to_have_count(1)
    await expect(groups.first).to_contain_text("deadlock detected on loyalty_balances for order <id>")
    await expect(groups.first.locator("td").first).to_have_text("2")
    await page.screenshot(path=str(screenshots / "dead-letters.png"), full_page=True)

    await page.get_by_test_id("redrive-group").click()
    await expect(page.get_by_test_id("redrive-count")).to_have_text("2")  # the confirmation's count
    await page.get_by_test_id("redrive-confirm-button").click()
    await expect(page.get_by_test_id("redrive-outcome")).to_contain_text(
        "Redrove 2 dead letter(s) to loyalty"
    )

    await page.goto(f"{stack.api_url}/console/orders/{orders[0]}")
    lane = page.locator('[data-lane="reactor:loyalty"]')
    await expect(lane.locator('[data-kind="delivery.redriven"]')).to_have_count(1, timeout=WAIT_MS)
    await expect(lane.locator('[data-kind="delivery.processed"]')).to_have_count(2, timeout=WAIT_MS)
    assert await points(shop, customer) == 2 * POINTS_PER_ORDER
    await page.goto(f"{stack.api_url}/console/dead-letters?reactor=loyalty")
    await expect(page.locator("[data-testid=groups] tbody tr")).to_contain_text("No dead letters")


async def test_an_operator_replays_an_order_to_one_reactor(
    stack: LocalStack, shop: Shop, page: Page, screenshots: Path
) -> None:
    customer = "cust-replay-" + uuid.uuid4().hex[:6]
    await shop.add_product("SKU-REPLAY", stock=20)
    order_id = await shop.place({"SKU-REPLAY": 2}, customer_id=customer)
    await shop.wait_until_handled(order_id, {"notification", "loyalty", "analytics"})

    await sign_in(page, stack.api_url, f"/console/replays?order_id={order_id}")
    await expect(page.get_by_test_id("replay-orders")).to_have_value(order_id)
    # The notification cannot reset what it did: a re-apply is refused, with the reason.
    await page.get_by_test_id("replay-reactor").select_option("notification")
    await page.get_by_test_id("replay-mode").select_option("reapply")
    await page.get_by_test_id("replay-plan").click()
    await expect(page.get_by_test_id("replay-refused")).to_contain_text("a mail cannot be unsent")

    await page.get_by_test_id("replay-reactor").select_option("loyalty")
    await page.get_by_test_id("replay-plan").click()
    await expect(page.get_by_test_id("replay-total")).to_have_text("1")
    await expect(page.get_by_test_id("replay-apply")).to_have_text("1")
    await page.screenshot(path=str(screenshots / "replay.png"), full_page=True)
    await page.get_by_test_id("replay-start").click()
    await page.wait_for_url(f"{stack.api_url}/console/replays/*")
    await expect(page.get_by_test_id("replay-state")).to_have_text("done", timeout=WAIT_MS)
    await expect(page.get_by_test_id("replay-applied")).to_have_text("1")
    assert await points(shop, customer) == POINTS_PER_ORDER  # reset, then credited again: once

    await page.goto(f"{stack.api_url}/console/orders/{order_id}")
    loyalty = page.locator('[data-lane="reactor:loyalty"]')
    await expect(loyalty.locator('[data-kind="delivery.replayed"]')).to_have_count(1)
    await expect(loyalty.locator('[data-kind="delivery.processed"]')).to_have_count(2)
    others = page.locator('[data-lane="reactor:analytics"] [data-kind="delivery.replayed"]')
    await expect(others).to_have_count(0)  # to loyalty only
