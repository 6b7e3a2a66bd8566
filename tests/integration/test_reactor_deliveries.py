"""The reactor runtime's guarantees against the REAL RabbitMQ: duplicates, crashes, poison, DLQ, redrive."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent, encode_event
from messaging.broker import close_quietly, connect
from observability.tracing import TRACEPARENT
from reactors.analytics.models import DailySkuSales
from reactors.analytics.reactor import REACTOR as ANALYTICS
from reactors.base import Reactor
from reactors.dlq import Selection, list_dead_letters, redrive
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import DeliveryOutcome
from reactors.notification.models import Notification
from reactors.notification.reactor import REACTOR as NOTIFICATION
from tests.events import cancelled_event, shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import publish

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_a_duplicate_delivery_has_one_effect(events: EventStack) -> None:
    await events.start_reactors()
    shipped, cancelled = shipped_event(customer_id="cust-dup"), cancelled_event()
    for event in (shipped, shipped, cancelled, cancelled):
        await publish(events, event)

    async def duplicates_seen() -> bool:
        notified = await events.ledger("notification", DeliveryOutcome.DUPLICATE_IGNORED)
        loyal = await events.ledger("loyalty", DeliveryOutcome.DUPLICATE_IGNORED)
        analysed = await events.ledger("analytics", DeliveryOutcome.DUPLICATE_IGNORED)
        return (len(notified), len(loyal), len(analysed)) == (2, 1, 2)

    await eventually(duplicates_seen, what="every copy seen")
    assert len(events.sink.messages) == 2
    assert await events.count(Notification) == 2
    assert await events.count(LoyaltyLedgerEntry) == 1
    balance = await events.read(lambda s: s.get(LoyaltyBalance, "cust-dup"))
    assert balance.points == 20
    sales = await events.read(lambda s: s.get(DailySkuSales, (shipped.time.date(), "SKU-A", "EUR")))
    assert (sales.units, sales.revenue) == (2, 2_000)


@pytest.mark.slow
async def test_a_reactor_killed_before_it_acks_gets_the_message_again_and_applies_it_once(
    events: EventStack,
) -> None:
    for reactor in (LOYALTY, NOTIFICATION):
        committed = asyncio.Event()

        async def die_before_ack(
            stage: str, _event: ReceivedEvent, committed: asyncio.Event = committed
        ) -> None:
            assert stage == "committed"
            committed.set()
            await asyncio.Event().wait()  # hangs until the "process" is killed

        doomed = await events.start_reactor(reactor, fault=die_before_ack)
        doomed.may_fail = True
        event = shipped_event(customer_id=f"cust-kill-{reactor.name}")
        await publish(events, event)
        await asyncio.wait_for(committed.wait(), 15)
        await doomed.component.abort()  # connection dropped without an ack, work in flight abandoned
        await asyncio.wait_for(doomed.task, 15)

        await events.start_reactor(reactor)

        async def redelivered_and_ignored(name: str = reactor.name) -> bool:
            return len(await events.ledger(name, DeliveryOutcome.DUPLICATE_IGNORED)) == 1

        await eventually(redelivered_and_ignored, what=f"{reactor.name} got the message again")
        assert len(await events.ledger(reactor.name, DeliveryOutcome.PROCESSED)) == 1

    assert await events.count(LoyaltyLedgerEntry, LoyaltyLedgerEntry.customer_id == "cust-kill-loyalty") == 1
    mails = [mail for mail in events.sink.messages if mail["To"] == "cust-kill-notification@example.com"]
    assert len(mails) == 1  # the notifier's mail went out once


def fragile_reactor(poisoned: set[str], applied: list[str]) -> Reactor:
    """A test-only reactor that fails transiently, forever, on the orders in `poisoned`."""

    async def apply(event: ReceivedEvent, _session: AsyncSession) -> None:
        if event.subject in poisoned:
            raise ConnectionError(f"downstream refuses {event.subject}")
        applied.append(event.subject)

    return Reactor(name="fragile", routing_keys=("order.shipped.v1",), apply=apply)


async def test_poison_goes_to_the_dlq_after_the_limit_while_others_flow_then_redrive(
    events: EventStack,
) -> None:
    poison = shipped_event()
    good = [shipped_event() for _ in range(5)]
    poisoned, applied = {poison.subject}, list[str]()
    await events.start_reactor(fragile_reactor(poisoned, applied))
    for event in (poison, *good):
        await publish(events, event)

    async def dead_lettered() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.DEAD_LETTERED)) == 1

    await eventually(dead_lettered, what="the poison message dead-lettered")
    # The others were not held up. (`applied` is kept outside the transaction: a good message batched with
    # a returning retry of the poison is applied, rolled back with the batch, then applied alone.)
    assert sorted(set(applied)) == sorted(event.subject for event in good)
    retries = await events.ledger("fragile", DeliveryOutcome.RETRY_SCHEDULED)
    assert [record.attempt for record in retries] == [1, 2]  # max attempts 3: two waits, then the DLQ
    [letter] = await list_dead_letters(events.settings, events.database.sessions, "fragile")
    assert (letter.message_id, letter.order_id, letter.attempts) == (poison.id, poison.subject, 3)
    assert "gave up after 3 attempt(s)" in letter.reason and "downstream refuses" in letter.reason

    # Fixed downstream: redrive it to this reactor only; it is applied once.
    poisoned.clear()
    assert (
        await redrive(events.settings, events.database.sessions, "fragile", Selection.of_ids([poison.id]))
    ).redriven == [poison.id]
    await eventually(lambda: _applied(applied, poison.subject), what="the redriven message applied")
    assert await list_dead_letters(events.settings, events.database.sessions, "fragile") == []

    # A redriven copy of a message already applied is still deduplicated by the inbox.
    await publish(events, poison, exchange="", routing_key=events.topology.dead_letter_queue("fragile"))
    assert (await redrive(events.settings, events.database.sessions, "fragile", Selection())).redriven == [
        poison.id
    ]

    async def duplicate_ignored() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.DUPLICATE_IGNORED)) == 1

    await eventually(duplicate_ignored, what="the redriven duplicate ignored")
    assert applied.count(poison.subject) == 1
    assert len(await events.ledger("fragile", DeliveryOutcome.REDRIVEN)) == 2


async def _applied(applied: list[str], subject: str) -> bool:
    return subject in applied


async def test_permanent_errors_go_to_the_dlq_at_once(events: EventStack) -> None:
    await events.start_reactor(LOYALTY)
    valid = json.loads(encode_event(shipped_event()))
    unknown_version = {**valid, "id": "unknown-version", "type": "order.shipped.v9"}
    missing_field = {**valid, "id": "missing-field", "data": {**valid["data"], "lines": []}}
    await publish(events, body=b"{not json", message_id="not-json")
    await publish(events, body=json.dumps(unknown_version).encode(), message_id="unknown-version")
    await publish(events, body=json.dumps(missing_field).encode(), message_id="missing-field")
    # A v1 consumer tolerates a field it does not know (added by a newer producer).
    extended = {**valid, "data": {**valid["data"], "gift_wrap": True}, "partitionkey": "x"}
    await publish(events, body=json.dumps(extended).encode(), message_id=valid["id"])

    async def settled() -> bool:
        dead = await events.ledger("loyalty", DeliveryOutcome.DEAD_LETTERED)
        return len(dead) == 3 and len(await events.ledger("loyalty", DeliveryOutcome.PROCESSED)) == 1

    await eventually(settled, what="three dead letters and one processed")
    assert await events.ledger("loyalty", DeliveryOutcome.RETRY_SCHEDULED) == []
    letters = {
        letter.message_id: letter
        for letter in await list_dead_letters(events.settings, events.database.sessions, "loyalty")
    }
    assert sorted(letters) == ["missing-field", "not-json", "unknown-version"]
    assert {letter.attempts for letter in letters.values()} == {1}
    assert "not JSON" in letters["not-json"].reason
    assert "unknown event type or version 'order.shipped.v9'" in letters["unknown-version"].reason
    assert "data.lines" in letters["missing-field"].reason or "lines" in letters["missing-field"].reason


async def test_dead_letters_cli_lists_and_redrives_to_that_reactor_only(events: EventStack) -> None:
    await events.start_reactors([LOYALTY, ANALYTICS])
    stranded = shipped_event(customer_id="cust-cli")
    await publish(events, stranded, exchange="", routing_key=events.topology.dead_letter_queue("loyalty"))
    env = {
        **os.environ,
        "DATABASE_URL": events.settings.database_url,
        "RABBITMQ_URL": events.settings.rabbitmq_url,
        "BROKER_NAMESPACE": events.settings.broker_namespace,
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", "dlq", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = await asyncio.to_thread(cli, "list", "loyalty")
    assert stranded.id in listing and stranded.subject in listing and "order.shipped.v1" in listing
    assert "redrove 1 message(s)" in await asyncio.to_thread(cli, "redrive", "loyalty", "--all", "--yes")

    async def credited() -> bool:
        balance = await events.read(lambda s: s.get(LoyaltyBalance, "cust-cli"))
        return balance is not None and balance.points == 20

    await eventually(credited, what="the redriven event credited")
    assert await events.ledger("analytics") == []  # redriven to loyalty only
    assert "no dead letters" in await asyncio.to_thread(cli, "list", "loyalty")
    [processed] = await events.ledger("loyalty", DeliveryOutcome.PROCESSED)
    assert processed.detail == "redriven"


async def test_an_smtp_outage_is_retried_and_the_mail_sent_once_it_is_back(events: EventStack) -> None:
    events.settings = events.settings.model_copy(update={"reactor_max_attempts": 50})
    events.sink.stop()
    await events.start_reactor(NOTIFICATION)
    event = shipped_event(customer_id="cust-smtp")
    await publish(events, event)

    async def retrying() -> bool:
        return len(await events.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED)) >= 2

    await eventually(retrying, what="the send retried while SMTP is down")
    events.sink.start()  # SMTP is back

    async def sent() -> bool:
        return len(await events.ledger("notification", DeliveryOutcome.PROCESSED)) == 1

    await eventually(sent, what="the mail sent once SMTP is back")
    assert [mail["To"] for mail in events.sink.messages] == ["cust-smtp@example.com"]
    notification = await events.read(lambda s: s.get(Notification, event.id))
    assert notification.status == "sent" and notification.send_attempts >= 3


async def test_the_traceparent_is_kept_through_retries_the_dlq_and_a_redrive(events: EventStack) -> None:
    """Every delivery of one message, retried, dead-lettered and redriven, stays in the trace it came with."""
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    poison = shipped_event()
    poisoned, applied = {poison.subject}, list[str]()
    await events.start_reactor(fragile_reactor(poisoned, applied))
    await publish(events, poison, headers={TRACEPARENT: traceparent})

    async def dead_lettered() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.DEAD_LETTERED)) == 1

    await eventually(dead_lettered, what="the message dead-lettered after its retries")
    poisoned.clear()
    assert (
        await redrive(events.settings, events.database.sessions, "fragile", Selection.of_ids([poison.id]))
    ).redriven == [poison.id]
    await eventually(lambda: _applied(applied, poison.subject), what="the redriven message applied")

    async def processed() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.PROCESSED)) == 1

    await eventually(processed, what="the redriven delivery recorded")
    ledger = await events.ledger("fragile")
    outcomes = [record.outcome for record in ledger]
    assert outcomes.count(DeliveryOutcome.RETRY_SCHEDULED) == 2, outcomes
    assert {DeliveryOutcome.DEAD_LETTERED, DeliveryOutcome.REDRIVEN, DeliveryOutcome.PROCESSED} <= set(
        outcomes
    )
    assert {record.trace_id for record in ledger} == {trace_id}, [(r.outcome, r.trace_id) for r in ledger]


async def test_graceful_shutdown_finishes_the_message_in_flight(events: EventStack) -> None:
    started, applied = asyncio.Event(), list[str]()

    async def slow(event: ReceivedEvent, _session: AsyncSession) -> None:
        started.set()
        await asyncio.sleep(0.5)
        applied.append(event.subject)

    reactor = Reactor(name="slow", routing_keys=("order.shipped.v1",), apply=slow)
    running = await events.start_reactor(reactor)
    event = shipped_event()
    await publish(events, event)
    await asyncio.wait_for(started.wait(), 15)

    running.stop.set()  # stop consuming, finish the message in flight, close
    await asyncio.wait_for(running.task, events.settings.reactor_shutdown_timeout_seconds + 5)

    assert applied == [event.subject]
    assert len(await events.ledger("slow", DeliveryOutcome.PROCESSED)) == 1
    await events.start_reactor(reactor)  # it was acked: nothing comes back
    # The queue is first in, first out: once a later event is applied, a redelivery would have come first.
    later = shipped_event()
    await publish(events, later)

    async def later_applied() -> bool:
        return later.subject in applied

    await eventually(later_applied, what="the later event applied")
    assert applied == [event.subject, later.subject]
    assert await events.ledger("slow", DeliveryOutcome.DUPLICATE_IGNORED) == []


async def test_a_message_never_acked_is_dead_lettered_by_the_broker_after_the_delivery_limit(
    events: EventStack,
) -> None:
    """A message that kills every consumer that takes it cannot circulate forever (x-delivery-limit)."""
    await events.declare([LOYALTY.subscription])
    event = shipped_event()
    await publish(events, event)
    connection = await connect(events.settings, "test-crashing-consumer")
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(events.topology.queue("loyalty"))
        deliveries = 0
        while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
            deliveries += 1
            await message.nack(requeue=True)  # what a crash before the ack amounts to
    finally:
        await close_quietly(connection, 5)

    assert deliveries == events.settings.reactor_delivery_limit + 1
    [letter] = await list_dead_letters(events.settings, events.database.sessions, "loyalty")
    assert letter.message_id == event.id and letter.order_id == event.subject
    assert letter.reason.startswith("broker: delivery_limit")
