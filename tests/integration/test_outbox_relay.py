"""The transactional outbox and its relay, against the REAL RabbitMQ, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select

from activities.messages import OrderClosure, OrderRef
from activities.orders import OrderActivities
from contracts.envelope import STRUCTURED_CONTENT_TYPE, CloudEvent, event_id_for
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1
from domain.model import FailureReason, OrderStatus, workflow_id_for
from messaging.broker import close_quietly, connect
from messaging.models import PENDING, PUBLISHED, OutboxEvent
from messaging.outbox import add_to_outbox
from messaging.topology import Subscription
from orchestrator.client import place_order
from reactors.loyalty.models import LoyaltyLedgerEntry
from reactors.models import DeliveryOutcome
from reactors.notification.smtp_sink import SmtpSink
from tests.conftest import SagaHarness
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.support import add_product, order_command

pytestmark = pytest.mark.integration

PROBE = Subscription("probe", ("order.#",))


class RelayKilled(BaseException):
    """Stands for the relay process dying: nothing in the relay catches it."""


async def write_to_outbox(stack: EventStack, *events: CloudEvent) -> None:
    async with stack.database.sessions() as session, session.begin():
        for event in events:
            await add_to_outbox(session, event)


async def outbox_rows(stack: EventStack) -> list[OutboxEvent]:
    async with stack.database.sessions() as session:
        return list((await session.scalars(select(OutboxEvent).order_by(OutboxEvent.created_at))).all())


@contextlib.asynccontextmanager
async def probe_messages(stack: EventStack) -> AsyncIterator[list[AbstractIncomingMessage]]:
    """Everything the exchange routes to the probe queue, collected as it arrives (auto-acked)."""
    await stack.declare([PROBE])
    received: list[AbstractIncomingMessage] = []
    connection = await connect(stack.settings, "test-probe")
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(stack.topology.queue(PROBE.reactor))

        async def collect(message: AbstractIncomingMessage) -> None:
            received.append(message)

        await queue.consume(collect, no_ack=True)
        yield received
    finally:
        await close_quietly(connection, 5)


async def test_saga_steps_write_their_event_once_in_the_status_transaction(
    saga: SagaHarness, smtp_sink: SmtpSink
) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5, unit_price=1_000)
    shipped = order_command(items={"SKU-A": 1})
    declined = order_command(items={"SKU-A": 1}, token="tok_declined")
    for command in (shipped, declined):
        handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
        await asyncio.wait_for(handle.result(), 30)

    # Re-running the steps (a retry after a lost completion, a replay) adds no second event.
    orders = OrderActivities(saga.database.sessions)
    assert not (await orders.mark_order_shipped(OrderRef(shipped.order_id))).changed
    closure = OrderClosure(declined.order_id, OrderStatus.FAILED, FailureReason.PAYMENT_DECLINED, "declined")
    assert not (await orders.close_order(closure)).changed

    async with saga.database.sessions() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.event_type))).all()
    assert [(row.id, row.status) for row in rows] == [
        (event_id_for(workflow_id_for(declined.order_id), ORDER_CANCELLED_V1), PENDING),
        (event_id_for(workflow_id_for(shipped.order_id), ORDER_SHIPPED_V1), PENDING),
    ]
    cancelled = rows[0].envelope["data"]
    assert cancelled["final_status"] == "FAILED"
    assert cancelled["compensations"] == ["refund_payment", "release_inventory"]  # newest first


async def test_relay_publishes_persistent_confirmed_and_wakes_at_once(events: EventStack) -> None:
    first = [shipped_event() for _ in range(3)]
    await write_to_outbox(events, *first)
    # The safety-net poll is a minute: a row that goes out within the wait below was woken for.
    events.settings = events.settings.model_copy(update={"outbox_poll_interval_seconds": 60.0})
    async with probe_messages(events) as received:
        events.start_relay(reactors=())

        async def got(count: int) -> bool:
            return len(received) >= count

        await eventually(lambda: got(3), what="the three rows published")
        assert sorted(m.message_id or "" for m in received) == sorted(e.id for e in first)
        message = received[0]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == STRUCTURED_CONTENT_TYPE
        assert json.loads(message.body)["specversion"] == "1.0"

        # Once its pass is done the relay waits; a new row goes out long before the minute's poll (NOTIFY
        # on PostgreSQL, the 100 ms pending-rows poll on SQLite).
        await eventually(lambda: _published(events), what="the first pass marked")
        await write_to_outbox(events, shipped_event())
        await eventually(lambda: got(4), within=15, what="the new row published without waiting for the poll")

    rows = await outbox_rows(events)
    assert {(row.status, row.attempts) for row in rows} == {(PUBLISHED, 1)}


async def test_an_unroutable_event_stays_pending_with_its_error(events: EventStack) -> None:
    event = shipped_event()
    await write_to_outbox(events, event)
    events.start_relay(reactors=())  # declares the exchange, but no queue is bound

    async def attempted() -> bool:
        return (await outbox_rows(events))[0].attempts >= 1

    await eventually(attempted, what="a publish attempt")
    [row] = await outbox_rows(events)
    assert row.status == PENDING
    assert row.last_error is not None and "NO_ROUTE" in row.last_error

    async with probe_messages(events) as received:  # a queue is bound now: the row drains
        await eventually(lambda: _published(events), what="the row published once routable")
        assert [m.message_id for m in received] == [event.id]


async def _arrived(received: list[AbstractIncomingMessage], message_id: str) -> bool:
    return any(m.message_id == message_id for m in received)


async def _published(stack: EventStack) -> bool:
    return all(row.status == PUBLISHED for row in await outbox_rows(stack))


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_several_relays_on_postgresql_publish_each_row_once(events: EventStack) -> None:
    batch = [shipped_event() for _ in range(60)]
    await write_to_outbox(events, *batch)
    async with probe_messages(events) as received:
        for _ in range(3):
            events.settings = events.settings.model_copy(update={"outbox_batch_size": 7})
            events.start_relay(reactors=())
        await eventually(lambda: _published(events), what="all rows published")
        # A duplicate, if any, was published before the relays' next pass: one more row, and its arrival,
        # show that pass done (a condition, not a sleep).
        marker = shipped_event()
        await write_to_outbox(events, marker)
        await eventually(lambda: _published(events), what="the marker row published")
        await eventually(lambda: _arrived(received, marker.id), what="the marker row received")
    received = [m for m in received if m.message_id != marker.id]
    assert len(received) == 60
    assert sorted(m.message_id or "" for m in received) == sorted(e.id for e in batch)


@pytest.mark.slow
async def test_relay_killed_after_confirm_publishes_again_and_reactors_absorb_it(events: EventStack) -> None:
    await events.start_reactors()

    async def die_after_confirm(_event_id: str) -> None:
        raise RelayKilled

    event = shipped_event(customer_id="cust-relay")
    await write_to_outbox(events, event)
    async with probe_messages(events) as received:
        doomed = events.start_relay(after_confirm=die_after_confirm)
        doomed.may_fail = True
        with pytest.raises(RelayKilled):
            await asyncio.wait_for(doomed.task, 15)
        assert (await outbox_rows(events))[0].status == PENDING  # confirmed, but never marked

        events.start_relay()
        await eventually(lambda: _published(events), what="the row published by the next relay")

        async def every_reactor_saw_both() -> bool:
            ledgers = [await events.ledger(name, DeliveryOutcome.DUPLICATE_IGNORED) for name in REACTOR_NAMES]
            return all(len(ledger) == 1 for ledger in ledgers)

        await eventually(every_reactor_saw_both, what="the duplicate ignored by every reactor")
        assert [m.message_id for m in received] == [event.id, event.id]  # really published twice

    for name in REACTOR_NAMES:
        assert len(await events.ledger(name, DeliveryOutcome.PROCESSED)) == 1
    assert await events.count(LoyaltyLedgerEntry) == 1
    assert len(events.sink.messages) == 1


REACTOR_NAMES = ("notification", "loyalty", "analytics")
