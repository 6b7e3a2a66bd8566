"""From the saga to the three reactors through the outbox and the REAL RabbitMQ, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1
from domain.model import OrderStatus
from messaging.models import PUBLISHED, OutboxEvent
from orchestrator.client import place_order
from reactors.analytics.queries import sales_on
from reactors.base import Reactor
from reactors.loyalty.queries import loyalty_account
from reactors.models import DeliveryOutcome, InboxMessage
from reactors.notification.queries import notifications_for_order
from reactors.notification.smtp_sink import SmtpSink
from reactors.registry import REACTORS
from tests.conftest import SagaHarness
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.support import add_product, order_command, order_snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(saga: SagaHarness, smtp_sink: SmtpSink) -> AsyncIterator[EventStack]:
    async with event_stack(saga.settings, saga.database, smtp_sink) as events:
        yield events


async def test_shipped_and_failed_sagas_reach_notification_loyalty_and_analytics(
    saga: SagaHarness, stack: EventStack
) -> None:
    await stack.start_reactors()
    stack.start_relay()
    await add_product(saga.database.sessions, "SKU-A", on_hand=10, unit_price=1_999)
    await add_product(saga.database.sessions, "SKU-B", on_hand=10, unit_price=550)
    shipped = order_command(items={"SKU-A": 2, "SKU-B": 3}, customer_id="cust-ship")
    declined = order_command(items={"SKU-A": 1}, token="tok_declined", customer_id="cust-declined")

    handles = [
        await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
        for command in (shipped, declined)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), 30)
    assert [result.status for result in results] == [OrderStatus.SHIPPED, OrderStatus.FAILED]

    async def all_processed() -> bool:
        return await stack.count(InboxMessage) == 5  # notification x2, loyalty x1, analytics x2

    await eventually(all_processed, what="every reactor processed its events")

    # Notification: one mail per event, through SMTP, recorded as sent.
    mails = {mail["To"]: mail for mail in stack.sink.messages}
    assert sorted(mails) == ["cust-declined@example.com", "cust-ship@example.com"]
    tracking = (await stack.read(lambda s: notifications_for_order(s, shipped.order_id)))[0]
    assert tracking.status == "sent" and tracking.event_type == ORDER_SHIPPED_V1.type
    shipments = (await order_snapshot(saga.database.sessions, shipped.order_id))["shipments"]
    assert isinstance(shipments, list)
    [(_, tracking_number)] = shipments
    assert f"Tracking number: {tracking_number}" in mails["cust-ship@example.com"].get_content()
    assert mails["cust-ship@example.com"]["Message-ID"] == tracking.message_id
    cancelled_mail = mails["cust-declined@example.com"].get_content()
    assert "payment declined" in cancelled_mail and "reserved items were put back" in cancelled_mail

    # Loyalty: 1 point per whole euro of the shipped order only (2 x 19.99 + 3 x 5.50 = 56.48 -> 56).
    account = await stack.read(lambda s: loyalty_account(s, "cust-ship"))
    assert account.points == 56 and [entry.order_id for entry in account.entries] == [shipped.order_id]
    assert (await stack.read(lambda s: loyalty_account(s, "cust-declined"))).points == 0

    # Analytics: sales per SKU and shipped/cancelled counts on the UTC days of the events themselves, not of
    # today (a run across midnight would look on the wrong day).
    async with saga.database.sessions() as session:
        envelopes = (await session.scalars(select(OutboxEvent.envelope))).all()
    days = {
        datetime.fromisoformat(envelope["data"][key]).astimezone(UTC).date()
        for envelope in envelopes
        for key in ("shipped_at", "cancelled_at")
        if key in envelope["data"]
    }
    counts, per_sku = [0, 0], dict[str, tuple[int, int]]()
    for day in sorted(days):
        sales = await stack.read(partial(sales_on, day=day))
        counts = [counts[0] + sales.orders_shipped, counts[1] + sales.orders_cancelled]
        for sku in sales.skus:
            units, revenue = per_sku.get(sku.sku, (0, 0))
            per_sku[sku.sku] = (units + sku.units, revenue + sku.revenue)
    assert counts == [1, 1]
    assert sorted((sku, units, revenue) for sku, (units, revenue) in per_sku.items()) == [
        ("SKU-A", 2, 3_998),
        ("SKU-B", 3, 1_650),
    ]

    # The outbox: one row per event, published once. The relay marks a row once the confirm is back, which
    # can be after a reactor already applied the event (seen under load on SQLite): wait for the marks.
    async def marked_published() -> bool:
        return await stack.count(OutboxEvent, OutboxEvent.status == PUBLISHED) == 2

    await eventually(marked_published, what="the relay marked both rows published")
    async with saga.database.sessions() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.event_type))).all()
    assert [(row.event_type, row.subject, row.status) for row in rows] == [
        (ORDER_CANCELLED_V1.type, declined.order_id, PUBLISHED),
        (ORDER_SHIPPED_V1.type, shipped.order_id, PUBLISHED),
    ]
    processed = await stack.ledger("notification", DeliveryOutcome.PROCESSED)
    assert sorted(record.subject or "" for record in processed) == sorted(
        [shipped.order_id, declined.order_id]
    )


async def test_a_fourth_reactor_receives_events_with_no_change_elsewhere(
    saga: SagaHarness, stack: EventStack
) -> None:
    """Extension: a reactor defined here, registered only for this test, next to the real three."""
    audited: list[tuple[str, str]] = []

    async def audit(event: ReceivedEvent, _session: AsyncSession) -> None:
        audited.append((event.type, event.subject))

    audit_reactor = Reactor(name="audit", routing_keys=("order.#",), apply=audit)
    reactors = (*REACTORS, audit_reactor)
    await stack.start_reactors(reactors)
    stack.start_relay(reactors)
    await add_product(saga.database.sessions, "SKU-A", on_hand=5, unit_price=1_000)
    command = order_command(items={"SKU-A": 1})

    handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
    assert (await asyncio.wait_for(handle.result(), 30)).status == OrderStatus.SHIPPED

    async def audited_and_others_done() -> bool:
        return bool(audited) and await stack.count(InboxMessage) == 4

    await eventually(audited_and_others_done, what="audit and the three reactors processed the event")
    assert audited == [(ORDER_SHIPPED_V1.type, command.order_id)]
    assert len(await stack.ledger("audit", DeliveryOutcome.PROCESSED)) == 1
