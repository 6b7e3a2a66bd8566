"""The notification reactor's waves against the REAL broker, databases and an aiosmtpd server: a batch is
claimed in one transaction, sent over a pool of kept-open SMTP connections, and marked `sent` in the one
transaction of its inbox and ledger rows. What a failure in the middle of a wave retries, that nothing is
lost and nothing is marked `sent` that was not, what a crash before the wave's commit costs (at most the
wave, same Message-IDs), and the pool reconnecting after the SMTP server restarted."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent
from infra.db import Database
from infra.settings import Settings
from reactors.base import Reactor
from reactors.dlq import list_dead_letters
from reactors.models import DeliveryOutcome
from reactors.notification.models import Notification
from reactors.notification.reactor import REACTOR as NOTIFICATION
from reactors.notification.reactor import mark_mail_sent, mark_mails_sent
from reactors.notification.smtp_sink import SmtpSink
from tests.events import shipped_event
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.integration.event_helpers import publish
from tests.integration.test_money_and_mail import ScriptedReplies, script
from tests.support import free_port

pytestmark = pytest.mark.integration

WAVE = 10


@pytest.fixture
async def scripted(database: tuple[Settings, Database]) -> AsyncIterator[EventStack]:
    """An event stack whose SMTP server answers RCPT TO as scripted (`script(stack)`)."""
    settings, db = database
    sink = SmtpSink("127.0.0.1", free_port(), rcpt_reply=ScriptedReplies())
    sink.start()
    try:
        async with event_stack(settings, db, sink) as stack:
            yield stack
    finally:
        sink.stop()


async def queue_wave(stack: EventStack, count: int = WAVE, prefix: str = "wave") -> list[CloudEvent]:
    """`count` events queued before the reactor consumes, so that it takes them as one batch (one wave)."""
    await stack.declare([NOTIFICATION.subscription])
    events = [
        shipped_event(customer_id=f"cust-{prefix}-{i}", email=f"{prefix}-{i}@example.com")
        for i in range(count)
    ]
    for event in events:
        await publish(stack, event)
    return events


async def rows(stack: EventStack) -> dict[str, Notification]:
    async def read(session: AsyncSession) -> dict[str, Notification]:
        return {row.event_id: row for row in await session.scalars(select(Notification))}

    result: dict[str, Notification] = await stack.read(read)
    return result


def mailed(stack: EventStack) -> Counter[str]:
    """How many times each Message-ID reached the SMTP server."""
    return Counter(str(mail["Message-ID"]) for mail in stack.sink.messages)


async def settled(stack: EventStack, count: int) -> None:
    async def reached() -> bool:
        ledger = await stack.ledger("notification")
        final = [r for r in ledger if r.outcome != DeliveryOutcome.RETRY_SCHEDULED]
        return len(final) >= count

    await eventually(reached, what=f"{count} notification deliveries settled")


async def test_a_wave_with_a_refused_and_a_deferred_mail_commits_the_others_together(
    scripted: EventStack,
) -> None:
    """One wave of ten: a 550 (dead-lettered at once, row `failed`), a 451 (row `retrying`, sent at the
    next attempt), eight sent and marked `sent` in the wave's one transaction. Each mail reaches the server
    once; exactly the mails the server accepted are `sent`."""
    script(scripted)["wave-3@example.com"] = ["550 5.1.1 no such user"]
    script(scripted)["wave-6@example.com"] = ["451 4.3.0 try again later"]
    events = await queue_wave(scripted)
    await scripted.start_reactor(NOTIFICATION)
    await settled(scripted, WAVE)

    ledger = await scripted.ledger("notification")
    outcomes = Counter(record.outcome for record in ledger)
    assert outcomes == {
        DeliveryOutcome.PROCESSED: WAVE - 1,
        DeliveryOutcome.RETRY_SCHEDULED: 1,
        DeliveryOutcome.DEAD_LETTERED: 1,
    }
    first_tries = [r for r in ledger if r.outcome == DeliveryOutcome.PROCESSED and r.attempt == 1]
    assert len(first_tries) == WAVE - 2
    # Marked together: the rows of a wave's transaction share their time.
    assert max(Counter(r.created_at for r in first_tries).values()) > 1
    [retried] = [r for r in ledger if r.outcome == DeliveryOutcome.RETRY_SCHEDULED]
    assert retried.message_id == events[6].id and "451" in (retried.detail or "")
    [letter] = await list_dead_letters(scripted.settings, scripted.database.sessions, "notification")
    assert letter.message_id == events[3].id and "550" in letter.reason

    by_id = await rows(scripted)
    assert by_id[events[3].id].status == "failed"
    assert (by_id[events[6].id].status, by_id[events[6].id].send_attempts) == ("sent", 2)
    sent = {f"<{event_id}@order-saga>" for event_id, row in by_id.items() if row.status == "sent"}
    assert mailed(scripted) == Counter(dict.fromkeys(sent, 1))  # sent once each; `sent` = accepted
    assert len(sent) == WAVE - 1


def failing_commits(failures: dict[str, int]) -> Reactor:
    """The notification reactor whose wave transaction always fails, and whose transaction of a lone event
    fails `failures[event_id]` times first (the database going away under the commit)."""

    async def apply_batch(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
        await mark_mails_sent(events, session)
        raise ConnectionError("the database went away during the wave's commit")

    async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
        await mark_mail_sent(event, session)
        if failures.get(event.id, 0) > 0:
            failures[event.id] -= 1
            raise ConnectionError("the database went away during the commit")

    return dataclasses.replace(NOTIFICATION, apply=apply, apply_batch=apply_batch)


async def test_a_wave_whose_transaction_fails_is_recorded_later_without_a_second_mail(
    events: EventStack,
) -> None:
    """The wave's mails were accepted, its transaction failed: each event is handled again on its own (half
    of them failing once more, so retried through the wait queue), finds its row `sending` under the claim
    this process sent it under, and is marked `sent` without a second mail. Nothing lost, nothing sent
    twice."""
    wave = await queue_wave(events)
    failures = {event.id: 1 for event in wave[::2]}
    await events.start_reactor(failing_commits(failures))
    await settled(events, WAVE)

    outcomes = Counter(record.outcome for record in await events.ledger("notification"))
    assert outcomes == {DeliveryOutcome.PROCESSED: WAVE, DeliveryOutcome.RETRY_SCHEDULED: WAVE // 2}
    assert mailed(events) == Counter({f"<{event.id}@order-saga>": 1 for event in wave})
    assert {row.status for row in (await rows(events)).values()} == {"sent"}
    assert failures == dict.fromkeys(failures, 0)


@pytest.mark.slow
async def test_a_notifier_killed_before_its_wave_commits_sends_that_wave_again_with_the_same_ids(
    events: EventStack,
) -> None:
    """The documented window: the process dies after the server accepted a wave's mails, before the wave's
    transaction. Its events come back, the claims lapse after the lease (2 s here), and the wave is sent a
    second time, each copy with the same Message-ID; then every row is `sent`, every event applied once."""
    hung: list[str] = []  # the events of the wave that was sent and never committed

    async def hang_batch(wave: Sequence[ReceivedEvent], _session: AsyncSession) -> None:
        hung.extend(event.id for event in wave)
        await asyncio.Event().wait()  # hangs until the "process" is killed

    async def hang(event: ReceivedEvent, session: AsyncSession) -> None:
        await hang_batch([event], session)

    wave = await queue_wave(events)
    doomed = await events.start_reactor(dataclasses.replace(NOTIFICATION, apply=hang, apply_batch=hang_batch))
    doomed.may_fail = True
    await eventually(lambda: asyncio.sleep(0, bool(hung)), what="a wave sent")
    await doomed.component.abort()
    await asyncio.wait_for(doomed.task, 15)
    by_id = await rows(events)
    assert {by_id[event_id].status for event_id in hung} == {"sending"}  # sent, not recorded
    # The dead notifier's claims lapse: its events come back and find them expired.
    await asyncio.sleep(events.settings.notification_send_lease_seconds)

    await events.start_reactor(NOTIFICATION)
    await settled(events, WAVE)
    assert mailed(events) == Counter(
        {f"<{event.id}@order-saga>": 2 if event.id in hung else 1 for event in wave}
    )
    assert {row.status for row in (await rows(events)).values()} == {"sent"}
    outcomes = Counter(record.outcome for record in await events.ledger("notification"))
    assert outcomes == {DeliveryOutcome.PROCESSED: WAVE}


async def test_the_pool_reconnects_after_the_smtp_server_restarts(events: EventStack) -> None:
    """Every connection of the pool is open when the server restarts; the next mails go out on fresh
    connections, without a retry."""
    pool_size = events.settings.notification_smtp_connections
    await events.start_reactor(NOTIFICATION)
    before = [shipped_event(customer_id=f"cust-before-{i}") for i in range(pool_size + 1)]
    for event in before:
        await publish(events, event)
    await settled(events, len(before))

    events.sink.stop()
    events.sink.start()
    after = [shipped_event(customer_id=f"cust-after-{i}") for i in range(2 * pool_size)]
    for event in after:
        await publish(events, event)
    await settled(events, len(before) + len(after))

    assert await events.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED) == []
    assert mailed(events) == Counter({f"<{event.id}@order-saga>": 1 for event in [*before, *after]})
