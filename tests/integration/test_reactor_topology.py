"""Topology drift against the REAL RabbitMQ: a reactor's queue deleted under it, or changed arguments.

Deleting a queue cancels its consumer on the broker side (basic.cancel); aio-pika only logs it. The runtime
must notice, redeclare and resume (or exit when the broker refuses its queues), and the relay must not
mark events published that a vanished queue missed. Changing a queue's arguments goes through
`messaging.queue_migration`, which loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent
from messaging.broker import close_quietly, connect
from messaging.models import PUBLISHED, OutboxEvent
from messaging.outbox import add_to_outbox
from messaging.queue_migration import MigrationRefused, holding_queue, migrate_queues
from messaging.topology import Topology, declare_subscription, missing_queues
from reactors.base import Reactor
from reactors.loyalty.models import LoyaltyLedgerEntry
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import DeliveryOutcome
from reactors.runtime import ReactorRuntime, TopologyRefused
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import publish

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def counted(metric: str, reactor: str) -> float:
    return REGISTRY.get_sample_value(metric, {"reactor": reactor}) or 0.0


async def broker_call(stack: EventStack, call: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run `call(channel, *args)` on a connection of its own (as an operator's tool would)."""
    connection = await connect(stack.settings, "test-operator")
    try:
        channel = await connection.channel()
        await call(channel, *args)
    finally:
        await close_quietly(connection, 5)


async def delete_queue(stack: EventStack, name: str) -> None:
    async def delete(channel: object, queue: str) -> None:
        await channel.queue_delete(queue)  # type: ignore[attr-defined]

    await broker_call(stack, delete, name)


async def queue_is_missing(stack: EventStack, name: str) -> bool:
    connection = await connect(stack.settings, "test-check")
    try:
        return bool(await missing_queues(connection.channel, [name], 5))
    finally:
        await close_quietly(connection, 5)


async def write_to_outbox(stack: EventStack, *events: CloudEvent) -> None:
    async with stack.database.sessions() as session, session.begin():
        for event in events:
            await add_to_outbox(session, event)


async def published(stack: EventStack, *events: CloudEvent) -> bool:
    async with stack.database.sessions() as session:
        statuses = (
            await session.scalars(
                select(OutboxEvent.status).where(OutboxEvent.id.in_([e.id for e in events]))
            )
        ).all()
    return len(statuses) == len(events) and set(statuses) == {PUBLISHED}


async def processed(stack: EventStack, reactor: str, count: int) -> bool:
    return len(await stack.ledger(reactor, DeliveryOutcome.PROCESSED)) == count


async def test_a_reactor_whose_queue_is_deleted_redeclares_it_and_resumes(
    events: EventStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The reproduction of issue 11.2: before the fix the consumer idled and the publish below was
    unroutable (nothing bound any more)."""
    running = await events.start_reactor(LOYALTY)
    runtime = running.component
    assert isinstance(runtime, ReactorRuntime)
    cancelled = counted("reactor_consumer_cancellations_total", "loyalty")
    recovered = counted("reactor_consumer_recoveries_total", "loyalty")

    await delete_queue(events, events.topology.queue("loyalty"))

    async def resumed() -> bool:
        return counted("reactor_consumer_recoveries_total", "loyalty") == recovered + 1

    await eventually(resumed, what="the reactor consuming again")
    assert counted("reactor_consumer_cancellations_total", "loyalty") == cancelled + 1
    assert runtime.ready.is_set()
    assert counted("reactor_consuming", "loyalty") == 1
    assert any("cancelled the consumer" in record.getMessage() for record in caplog.records)

    orders = [shipped_event(customer_id="cust-vanished", lines=(("SKU-A", 1, 1_000),)) for _ in range(2)]
    for event in orders:
        await publish(events, event)  # mandatory: raises if no queue is bound
    await eventually(lambda: processed(events, "loyalty", 2), what="both events applied")
    assert await events.count(LoyaltyLedgerEntry) == 2


async def test_a_reactor_whose_queue_has_other_arguments_exits(events: EventStack) -> None:
    """No retry fixes a 406 on its own queue: `run` raises, so the process exits non-zero."""
    other = Topology(events.topology.namespace, events.topology.retry_delays_ms, delivery_limit=7)

    async def declare_other(channel: object) -> None:
        await declare_subscription(channel, other, LOYALTY.subscription, 5)  # type: ignore[arg-type]

    await broker_call(events, declare_other)
    runtime = ReactorRuntime(LOYALTY, events.settings, events.database.sessions, events.topology)
    with pytest.raises(TopologyRefused, match="PRECONDITION_FAILED"):
        await asyncio.wait_for(runtime.run(asyncio.Event()), 20)
    assert not runtime.ready.is_set()


async def test_the_relay_declares_a_missing_queue_again_before_publishing(events: EventStack) -> None:
    """The queue deleted while its reactor is down: the other queues would take the events and the relay
    would mark them published; it declares the queue again first, so the reactor finds them later."""
    events.start_relay()
    first = shipped_event(customer_id="cust-relay", lines=(("SKU-A", 1, 1_000),))
    await write_to_outbox(events, first)
    await eventually(lambda: published(events, first), what="the first event published")
    redeclared = counted("relay_queues_redeclared_total", "loyalty")

    await delete_queue(events, events.topology.queue("loyalty"))
    later = [shipped_event(customer_id="cust-relay", lines=(("SKU-A", 1, 1_000),)) for _ in range(2)]
    await write_to_outbox(events, *later)
    await eventually(lambda: published(events, *later), what="the later events published")
    assert counted("relay_queues_redeclared_total", "loyalty") == redeclared + 1

    await events.start_reactor(LOYALTY)
    await eventually(lambda: processed(events, "loyalty", 2), what="the events published while it was gone")
    assert {record.subject for record in await events.ledger("loyalty", DeliveryOutcome.PROCESSED)} == {
        event.subject for event in later
    }


async def test_a_queue_deleted_during_a_publish_batch_gets_the_batch_again(events: EventStack) -> None:
    """Deleted after the relay's check, with messages of the batch inside: the check after the batch
    sees it gone, so the batch is published again (the other reactors' inboxes absorb the copies)."""
    deleted: list[str] = []

    async def delete_once(event_id: str) -> None:
        if not deleted:
            deleted.append(event_id)
            await delete_queue(events, events.topology.queue("loyalty"))

    events.start_relay(after_confirm=delete_once)
    batch = [shipped_event(customer_id="cust-batch", lines=(("SKU-A", 1, 1_000),)) for _ in range(3)]
    await write_to_outbox(events, *batch)
    await eventually(lambda: published(events, *batch), what="the batch published")
    assert deleted

    await events.start_reactor(LOYALTY)
    await eventually(lambda: processed(events, "loyalty", 3), what="every event of the batch applied")
    assert await events.count(LoyaltyLedgerEntry) == 3


async def test_changing_the_delivery_limit_migrates_the_queues_without_losing_a_message(
    events: EventStack,
) -> None:
    """The README procedure: stop the reactor, migrate with the new settings, start it again."""
    await events.declare([LOYALTY.subscription])
    waiting = [shipped_event(customer_id="cust-migrate", lines=(("SKU-A", 1, 1_000),)) for _ in range(3)]
    for event in waiting:
        await publish(events, event)
    retried = shipped_event(customer_id="cust-migrate", lines=(("SKU-A", 1, 1_000),))
    await publish(
        events, retried, exchange="", routing_key=events.topology.wait_queue("loyalty", 200)
    )  # a retry waiting out its delay

    new_settings = events.settings.model_copy(update={"reactor_delivery_limit": 9})
    new_topology = Topology.from_settings(new_settings)
    # A consumer still attached (the reactor not stopped): refused, nothing touched.
    consumer = await connect(events.settings, "test-consumer")
    try:
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue(events.topology.queue("loyalty"), ensure=False)

        async def hold(message: object) -> None:
            pass  # never acked

        await queue.consume(hold)
        with pytest.raises(MigrationRefused, match="stop the loyalty reactor"):
            await migrate_queues(new_settings, new_topology, LOYALTY.subscription)
    finally:
        await close_quietly(consumer, 5)  # its unacked message goes back to the queue

    report = await migrate_queues(new_settings, new_topology, LOYALTY.subscription)
    assert await queue_is_missing(events, holding_queue(events.topology, "loyalty"))
    assert sum(report.moved.values()) >= 2 * len(waiting)  # out and back

    # The queue now has the new arguments: declaring it with them succeeds, with the old ones fails.
    async def declare_new(channel: object) -> None:
        await declare_subscription(channel, new_topology, LOYALTY.subscription, 5)  # type: ignore[arg-type]

    await broker_call(events, declare_new)
    later = shipped_event(customer_id="cust-migrate", lines=(("SKU-A", 1, 1_000),))
    await publish(events, later)
    events.settings = new_settings
    events.topology = new_topology
    await events.start_reactor(LOYALTY)
    await eventually(lambda: processed(events, "loyalty", 5), what="every message applied after migrating")
    subjects = {record.subject for record in await events.ledger("loyalty", DeliveryOutcome.PROCESSED)}
    assert subjects == {event.subject for event in (*waiting, retried, later)}


async def test_a_reactor_whose_channel_the_broker_closes_reconnects(events: EventStack) -> None:
    """The same kind from another side: the broker closes the consuming channel (here: an ack of a
    delivery tag it never sent, 406) while the connection stays up. Consuming must resume."""
    running = await events.start_reactor(LOYALTY)
    runtime = running.component
    assert isinstance(runtime, ReactorRuntime)
    consumption = runtime._consumption  # reaching in: nothing public acks a made-up delivery tag
    assert consumption is not None
    underlay = await consumption._channel.get_underlay_channel()
    await underlay.basic_ack(999_999)

    async def reconnected() -> bool:
        return runtime._consumption is not consumption and runtime.ready.is_set()

    await eventually(reconnected, what="a new consuming channel")
    event = shipped_event(customer_id="cust-channel", lines=(("SKU-A", 1, 1_000),))
    await publish(events, event)
    await eventually(lambda: processed(events, "loyalty", 1), what="the event applied")


async def test_a_reactor_process_on_queues_of_other_arguments_exits_until_the_ops_command_migrates_them(
    events: EventStack,
) -> None:
    """Processes, as a supervisor sees them: the reactors' process exits non-zero (not idling) while its
    queue has other arguments; `order-saga queues migrate` with the new setting fixes it without losing the
    message."""
    old = Topology(events.topology.namespace, events.topology.retry_delays_ms, delivery_limit=7)

    async def declare_old(channel: object) -> None:
        await declare_subscription(channel, old, LOYALTY.subscription, 5)  # type: ignore[arg-type]

    await broker_call(events, declare_old)
    waiting = shipped_event(customer_id="cust-process", lines=(("SKU-A", 1, 1_000),))
    await publish(events, waiting)
    env = {
        **os.environ,
        "DATABASE_URL": events.settings.database_url,
        "RABBITMQ_URL": events.settings.rabbitmq_url,
        "BROKER_NAMESPACE": events.settings.broker_namespace,
        "REACTOR_RETRY_DELAYS_MS": json.dumps(list(events.settings.reactor_retry_delays_ms)),
        "REACTOR_DELIVERY_LIMIT": str(events.settings.reactor_delivery_limit),
        "REACTORS_METRICS_PORT": "0",
    }

    def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    refused = await asyncio.to_thread(run, "entrypoints.reactors", "loyalty")
    assert refused.returncode != 0
    assert "PRECONDITION_FAILED" in refused.stderr

    migrated = await asyncio.to_thread(run, "entrypoints.cli", "queues", "migrate", "loyalty")
    assert migrated.returncode == 0, migrated.stderr
    assert f"delivery limit {events.settings.reactor_delivery_limit}" in migrated.stdout

    await events.start_reactor(LOYALTY)  # declares the same arguments now: consumes
    await eventually(lambda: processed(events, "loyalty", 1), what="the message kept through the migration")


async def test_a_reactor_whose_wait_queue_is_deleted_redeclares_it_and_still_retries(
    events: EventStack,
) -> None:
    """Drift elsewhere in the topology: the hand-over of a failed message to its wait queue comes back
    unroutable. Before, the message stayed unacked on the channel for good (no retry, a prefetch slot
    lost); now the runtime redeclares its queues and the message goes its usual way to the DLQ."""

    async def refuse(event: ReceivedEvent, _session: AsyncSession) -> None:
        raise ConnectionError(f"downstream refuses {event.subject}")

    reactor = Reactor(name="refusing", routing_keys=("order.shipped.v1",), apply=refuse)
    await events.start_reactor(reactor)
    recovered = counted("reactor_consumer_recoveries_total", "refusing")
    await delete_queue(
        events, events.topology.wait_queue("refusing", events.settings.reactor_retry_delays_ms[0])
    )
    poison = shipped_event()
    await publish(events, poison)

    async def dead_lettered() -> bool:
        return len(await events.ledger("refusing", DeliveryOutcome.DEAD_LETTERED)) == 1

    await eventually(dead_lettered, what="the message retried to the end and dead-lettered")
    assert counted("reactor_consumer_recoveries_total", "refusing") == recovered + 1
    retries = await events.ledger("refusing", DeliveryOutcome.RETRY_SCHEDULED)
    assert [record.attempt for record in retries] == [1, 2]
