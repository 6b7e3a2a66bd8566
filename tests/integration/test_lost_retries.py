"""A retry parked in a wait queue while RabbitMQ is stopped: the broker may drop it, the reactor must not.

The mechanism (issue 11 part 6): a wait queue hands a retry back to `<ns>.<reactor>` by at-most-once
dead-lettering. After `rabbitmqctl stop_app`/`start_app` every quorum queue elects its leader on its own;
a wait queue whose messages expired while the broker was down dead-letters them as soon as it has a leader,
and while the reactor's queue has none yet the broker drops them ("leader cast - leader not known. Command
is dropped."). The notification row stayed `retrying`/`sending`, no mail, no message anywhere.

Here: the SMTP server is down, so the first send fails and the event waits in the wait queue (3 s TTL);
RabbitMQ is stopped, kept down past that TTL, started again; then SMTP is back. The mail must go out once,
its row `sent`, the event applied once. Without `reactors.runtime.recovery` the event stays lost (the
broker's drop is what the test sets up; the sweep is what brings the event back).

The `slow` test stops the shared broker's AMQP side (`rabbitmqctl stop_app`), always restarting it: run it
under `flock -x /tmp/broker.lock`. The other stands a purge of the wait queue in for the broker's drop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent, encode_event
from infra.models import utcnow
from messaging.broker import close_quietly, connect
from messaging.models import PUBLISHED, OutboxEvent
from messaging.topology import Topology
from reactors.base import Reactor
from reactors.models import DeliveryOutcome, InboxMessage
from reactors.notification.models import SENT, Notification
from reactors.notification.reactor import REACTOR as NOTIFICATION
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import publish

pytestmark = [pytest.mark.integration]

WAIT_MS = 3_000


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120, capture_output=True)


@pytest.fixture
def broker_restorer() -> Iterator[None]:
    try:
        yield
    finally:
        rabbitmqctl("start_app")  # a no-op when it is running
        rabbitmqctl("await_startup")


async def start_notifier_with_an_outbox_event(
    events: EventStack, customer_id: str, reactor: Reactor = NOTIFICATION
) -> CloudEvent:
    """A reactor (the notification one unless told) with one 3 s wait queue and a quick sweep; an event in
    the outbox as the relay leaves it (published)."""
    events.settings = events.settings.model_copy(
        update={
            "reactor_retry_delays_ms": [WAIT_MS],
            "reactor_max_attempts": 5,
            "reactor_retry_lost_after_seconds": 2.0,
            "reactor_retry_sweep_interval_seconds": 0.5,
        }
    )
    events.topology = Topology.from_settings(events.settings)
    await events.start_reactor(reactor)
    event = shipped_event(customer_id=customer_id)
    async with events.database.sessions() as session, session.begin():
        session.add(
            OutboxEvent(
                id=event.id,
                event_type=event.type,
                routing_key=event.type,
                subject=event.subject,
                envelope=json.loads(encode_event(event)),
                status=PUBLISHED,
                published_at=utcnow(),
            )
        )
    return event


async def retry_scheduled(events: EventStack) -> bool:
    return bool(await events.ledger(NOTIFICATION.name, DeliveryOutcome.RETRY_SCHEDULED))


async def mailed_once(events: EventStack, event: CloudEvent) -> bool:
    async with events.database.sessions() as session:
        status = await session.scalar(select(Notification.status).where(Notification.event_id == event.id))
    return status == SENT and await events.count(InboxMessage, InboxMessage.message_id == event.id) == 1


async def purge_wait_queue(events: EventStack, reactor: str) -> int:
    """Empty `reactor`'s wait queue as the broker's drop would; how many messages it held."""
    connection = await connect(events.settings, "test-purge")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(events.topology.wait_queue(reactor, WAIT_MS), passive=True)
        purged = await queue.purge()
    finally:
        await close_quietly(connection, 5)
    return int(purged.message_count or 0)


def once_failing() -> Reactor:
    """A test-only reactor whose database step (as loyalty's and analytics') fails the first time."""
    failed: list[str] = []

    async def apply(event: ReceivedEvent, _session: AsyncSession) -> None:
        if not failed:
            failed.append(event.id)
            raise ConnectionError("not yet")

    return Reactor(name="once-failing", routing_keys=("order.shipped.v1",), apply=apply)


async def test_a_lost_retry_of_a_database_only_reactor_is_redriven_too(events: EventStack) -> None:
    reactor = once_failing()
    event = await start_notifier_with_an_outbox_event(events, "cust-db-only", reactor)
    await publish(events, event)

    async def scheduled() -> bool:
        return bool(await events.ledger(reactor.name, DeliveryOutcome.RETRY_SCHEDULED))

    await eventually(scheduled, what="the failed apply scheduled for a retry")
    assert await purge_wait_queue(events, reactor.name) == 1, "the retry was waiting in the wait queue"

    async def applied() -> bool:
        return await events.count(InboxMessage, InboxMessage.consumer == reactor.name) == 1

    await eventually(applied, within=30, what="the event applied after the sweep")
    recovered = await events.ledger(reactor.name, DeliveryOutcome.RETRY_RECOVERED)
    assert [row.message_id for row in recovered] == [event.id]


async def test_a_retry_the_wait_queue_lost_is_redriven_from_the_outbox(events: EventStack) -> None:
    """The broker's drop stood in for by a purge of the wait queue (no restart: a shared lock suffices)."""
    event = await start_notifier_with_an_outbox_event(events, "cust-purged-retry")
    events.sink.stop()  # the first send fails: the event goes to the wait queue
    await publish(events, event)
    await eventually(lambda: retry_scheduled(events), what="the failed send scheduled for a retry")
    assert await purge_wait_queue(events, NOTIFICATION.name) == 1, "the retry was waiting in the wait queue"
    events.sink.start()

    await eventually(lambda: mailed_once(events, event), within=30, what="the mail sent after the sweep")
    assert [mail["To"] for mail in events.sink.messages] == ["cust-purged-retry@example.com"]
    recovered = await events.ledger(NOTIFICATION.name, DeliveryOutcome.RETRY_RECOVERED)
    assert [row.message_id for row in recovered] == [event.id]
    assert recovered[0].attempt == 2


@pytest.mark.slow
async def test_a_retry_parked_in_a_wait_queue_across_a_broker_restart_is_not_lost(
    events: EventStack, broker_restorer: None
) -> None:
    event = await start_notifier_with_an_outbox_event(events, "cust-lost-retry")
    events.sink.stop()  # the first send fails: the event goes to the wait queue
    await publish(events, event)

    await eventually(lambda: retry_scheduled(events), what="the failed send scheduled for a retry")
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        scheduled_at = (await events.ledger(NOTIFICATION.name, DeliveryOutcome.RETRY_SCHEDULED))[0].created_at

        async def expired_while_down() -> bool:  # the TTL runs out while the broker is away
            return (utcnow() - scheduled_at).total_seconds() > 2 * WAIT_MS / 1000

        await eventually(expired_while_down, what="the wait queue's TTL elapsed")
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    events.sink.start()

    async def mailed() -> bool:
        async with events.database.sessions() as session:
            status = await session.scalar(
                select(Notification.status).where(Notification.event_id == event.id)
            )
        return status == SENT and await events.count(InboxMessage, InboxMessage.message_id == event.id) == 1

    await eventually(mailed, within=60, what="the mail sent and the event applied after the restart")
    assert [mail["To"] for mail in events.sink.messages] == ["cust-lost-retry@example.com"]
    assert await events.count(InboxMessage, InboxMessage.message_id == event.id) == 1
