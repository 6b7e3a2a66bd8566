"""Micro-batches against the REAL RabbitMQ and databases: a backlog is applied in batches, exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent, encode_event
from messaging.broker import ConfirmedPublisher
from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.base import Reactor
from reactors.dlq import list_dead_letters
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.notification.models import Notification
from reactors.registry import REACTORS
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually

pytestmark = pytest.mark.integration

BURST = 120
DUPLICATED = 15  # the first events of the burst are published twice


async def publish_burst(events: EventStack, bodies: list[tuple[str, bytes]]) -> None:
    """Publish like the relay (persistent, confirmed), over one connection."""
    publisher = ConfirmedPublisher(events.settings, "test-burst")
    try:
        for message_id, body in bodies:
            await publisher.publish(
                exchange=events.topology.exchange,
                routing_key="order.shipped.v1",
                body=body,
                message_id=message_id,
                message_type="order.shipped.v1",
            )
    finally:
        await publisher.close()


def batched(settled: list[DeliveryRecord]) -> int:
    """The largest number of deliveries settled at the same instant: one batch's (one ledger row each)."""
    return max(Counter(record.created_at for record in settled).values())


async def test_a_backlog_with_duplicates_and_poison_is_applied_exactly_once_in_batches(
    events: EventStack,
) -> None:
    shipped = [
        shipped_event(customer_id=f"cust-batch-{i % 7}", lines=(("SKU-B", 1, 300 + i),)) for i in range(BURST)
    ]
    bodies = [(event.id, encode_event(event)) for event in shipped]
    bodies[40:40] = [(event.id, encode_event(event)) for event in shipped[:DUPLICATED]]
    bodies.insert(70, ("poison", b"{not json"))
    # Queued before any reactor consumes: each reactor finds a backlog.
    await events.declare([reactor.subscription for reactor in REACTORS])
    await publish_burst(events, bodies)
    await events.start_reactors()

    async def settled() -> bool:
        for reactor in REACTORS:
            if len(await events.ledger(reactor.name)) < len(bodies):  # one ledger row per delivery
                return False
        return True

    await eventually(settled, within=60, what="every delivery settled by every reactor")
    for reactor in REACTORS:
        ledger = await events.ledger(reactor.name)
        outcomes = Counter(record.outcome for record in ledger)
        assert outcomes == {
            DeliveryOutcome.PROCESSED: BURST,
            DeliveryOutcome.DUPLICATE_IGNORED: DUPLICATED,
            DeliveryOutcome.DEAD_LETTERED: 1,
        }, reactor.name
        assert await events.count(InboxMessage, InboxMessage.consumer == reactor.name) == BURST
        [letter] = await list_dead_letters(events.settings, events.database.sessions, reactor.name)
        assert letter.message_id == "poison"
        processed = [record for record in ledger if record.outcome == DeliveryOutcome.PROCESSED]
        assert batched(processed) > 1, f"{reactor.name} handled the backlog one message at a time"
        assert {record.trace_id for record in ledger} == {None}  # published without a traceparent

    points = sum((300 + i) // 100 for i in range(BURST))  # one line of 300 + i cents each
    assert await events.count(LoyaltyLedgerEntry) == BURST
    total = await events.read(lambda s: s.scalar(select(func.sum(LoyaltyBalance.points))))
    assert total == points
    day = shipped[0].time.date()
    sales = await events.read(lambda s: s.get(DailySkuSales, (day, "SKU-B", "EUR")))
    assert (sales.units, sales.revenue) == (BURST, sum(300 + i for i in range(BURST)))
    orders = await events.read(lambda s: s.get(DailyOrderCounts, day))
    assert (orders.orders_shipped, orders.orders_cancelled) == (BURST, 0)
    # One mail per event, each recorded as sent, over the reactor's SMTP connections.
    assert len(events.sink.messages) == BURST
    assert sorted(mail["Message-ID"] for mail in events.sink.messages) == sorted(
        f"<{event.id}@order-saga>" for event in shipped
    )
    assert await events.count(Notification, Notification.status == "sent") == BURST


def flaky_reactor(recovers: str, poison: str) -> Reactor:
    """A test-only reactor that fails transiently on `poison` always, and on `recovers` until it has been
    sent to a retry once. Its effect is its inbox row (an effect outside the session would be repeated
    when a failed batch is handled again message by message)."""

    async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
        retried = await session.scalar(
            select(func.count()).where(
                DeliveryRecord.subject == event.subject,
                DeliveryRecord.outcome == DeliveryOutcome.RETRY_SCHEDULED,
            )
        )
        if event.subject == poison or (event.subject == recovers and not retried):
            raise ConnectionError(f"downstream refuses {event.subject}")

    return Reactor(name="flaky", routing_keys=("order.shipped.v1",), apply=apply)


async def test_a_transient_failure_in_a_batch_retries_that_message_and_applies_the_others(
    events: EventStack, caplog: pytest.LogCaptureFixture
) -> None:
    backlog: list[CloudEvent] = [shipped_event() for _ in range(30)]
    recovers, poison = backlog[5].subject, backlog[17].subject
    reactor = flaky_reactor(recovers, poison)
    await events.declare([reactor.subscription])
    await publish_burst(events, [(event.id, encode_event(event)) for event in backlog])
    await events.start_reactor(reactor)
    expected = sorted(event.subject for event in backlog if event.subject != poison)

    async def settled() -> bool:
        dead = await events.ledger("flaky", DeliveryOutcome.DEAD_LETTERED)
        return len(dead) == 1 and len(await events.ledger("flaky", DeliveryOutcome.PROCESSED)) == len(
            expected
        )

    await eventually(settled, what="the others processed, the poison dead-lettered")
    processed = await events.ledger("flaky", DeliveryOutcome.PROCESSED)
    assert sorted(record.subject or "" for record in processed) == expected  # each once
    assert {record.attempt for record in processed if record.subject != recovers} == {1}
    assert [record.attempt for record in processed if record.subject == recovers] == [2]
    retries = await events.ledger("flaky", DeliveryOutcome.RETRY_SCHEDULED)
    assert sorted((record.subject or "", record.attempt) for record in retries) == sorted(
        [(recovers, 1), (poison, 1), (poison, 2)]
    )
    [letter] = await list_dead_letters(events.settings, events.database.sessions, "flaky")
    assert letter.order_id == poison and letter.attempts == 3
    assert await events.count(InboxMessage, InboxMessage.consumer == "flaky") == len(expected)
    # The failing messages were taken in batches, which fell back to one message at a time.
    assert any("handling its messages one by one" in record.getMessage() for record in caplog.records)
