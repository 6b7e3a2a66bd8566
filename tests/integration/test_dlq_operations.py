"""One DLQ operation against the REAL RabbitMQ and PostgreSQL: it works on the messages in the DLQ when it
starts, each once (a message that comes back or arrives meanwhile is not touched), a redrive takes only what
the operator confirmed and says what it left, and concurrent readers of one DLQ never see part of it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent
from messaging.headers import DeadLetterHeaders
from messaging.topology import Subscription
from reactors.analytics.reactor import REACTOR as ANALYTICS
from reactors.base import PermanentError, Reactor
from reactors.dlq import Confirmed, DeadLetterQueueBusy, Selection, list_dead_letters, redrive, scan
from reactors.dlq import queue as dlq_queue
from reactors.dlq.letters import failure_signature, group_id
from reactors.models import DeliveryOutcome
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import dead_letter, publish
from tests.integration.test_recovery import cli

pytestmark = pytest.mark.integration
FRAGILE = Subscription("fragile", ("order.shipped.v1",))

REASON = "TimeoutError: lock timeout on order {}"
GROUP = group_id(failure_signature(REASON.format("0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10")))


@pytest.fixture(autouse=True)
async def queues(events: EventStack) -> None:
    """A test reactor's queues (nothing consumes them unless a test starts it), and a registered one's for
    the CLI."""
    await events.declare([FRAGILE, ANALYTICS.subscription])


async def stuck(events: EventStack, count: int, reactor: str = "fragile") -> list[CloudEvent]:
    letters = [shipped_event() for _ in range(count)]
    for event in letters:
        await dead_letter(events, event, reactor, REASON.format(event.subject))
    return letters


def meanwhile(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end on a loop and connection of its own, while the caller's loop waits: a
    message published this way is in the DLQ, confirmed, before the operation reads on."""
    thread = threading.Thread(target=asyncio.run, args=(work,))
    thread.start()
    thread.join()


async def test_a_redrive_takes_the_dlq_as_it_was_each_message_once(events: EventStack) -> None:
    first, second, third = await stuck(events, 3)
    later = shipped_event()

    async def arrive() -> None:
        # A new dead letter of the same group, and `first` back again as if it had failed again at once.
        await dead_letter(events, later, "fragile", REASON.format(later.subject))
        await publish(
            events,
            first,
            exchange="",
            routing_key=events.topology.dead_letter_queue("fragile"),
            headers={DeadLetterHeaders.REASON: REASON.format(first.subject), DeadLetterHeaders.REDRIVEN: 1},
        )

    def progress(done: int) -> None:
        if done == 1:
            meanwhile(arrive())

    done = await redrive(
        events.settings, events.database.sessions, "fragile", Selection(group=GROUP), progress=progress
    )

    assert done.redriven == [first.id, second.id, third.id]
    assert (done.matched, done.skipped) == (3, [])
    left = await list_dead_letters(events.settings, events.database.sessions, "fragile")
    assert [(letter.message_id, letter.redriven) for letter in left] == [(later.id, 0), (first.id, 1)]
    redriven = await events.ledger("fragile", DeliveryOutcome.REDRIVEN)
    assert sorted(row.message_id for row in redriven) == sorted([first.id, second.id, third.id])


async def test_a_redrive_takes_only_what_was_confirmed_and_reports_the_rest(events: EventStack) -> None:
    counted = await stuck(events, 3)
    dry = await redrive(
        events.settings, events.database.sessions, "fragile", Selection(group=GROUP), dry_run=True
    )
    assert (dry.matched, dry.matched_ids, dry.redriven) == (3, [e.id for e in counted], [])
    arrived = await stuck(events, 2)  # after the dry run, before the operator confirmed

    done = await redrive(
        events.settings,
        events.database.sessions,
        "fragile",
        Selection(group=GROUP),
        confirmed=Confirmed(message_ids=frozenset(dry.matched_ids)),
    )
    assert done.redriven == [e.id for e in counted]
    assert (done.matched, done.skipped, done.missing) == (5, [e.id for e in arrived], [])
    left = await list_dead_letters(events.settings, events.database.sessions, "fragile")
    assert [letter.message_id for letter in left] == [e.id for e in arrived]

    # A confirmed count instead of ids: at most that many, oldest first; a confirmed id gone is reported.
    more = await stuck(events, 1)
    by_count = await redrive(
        events.settings,
        events.database.sessions,
        "fragile",
        Selection(group=GROUP),
        confirmed=Confirmed(message_ids=frozenset([arrived[0].id, counted[0].id]), count=1),
    )
    assert (by_count.redriven, by_count.skipped) == ([arrived[0].id], [arrived[1].id, more[0].id])
    assert by_count.missing == [counted[0].id]


def refusing(applied: list[str]) -> Reactor:
    """A reactor whose downstream refuses every event for good: each redriven copy is dead-lettered again
    at once, while the redrive is still running."""

    async def apply(event: ReceivedEvent, _session: AsyncSession) -> None:
        applied.append(event.id)
        raise PermanentError(f"refused order {event.subject}")

    return Reactor(name="fragile", routing_keys=("order.shipped.v1",), apply=apply)


async def test_redriven_letters_that_fail_again_at_once_are_redriven_once(events: EventStack) -> None:
    letters = await stuck(events, 20)
    tried: list[str] = []
    await events.start_reactor(refusing(tried))

    done = await redrive(events.settings, events.database.sessions, "fragile", Selection(reason="lock"))
    assert sorted(done.redriven) == sorted(event.id for event in letters)

    async def all_back() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.DEAD_LETTERED)) == 20

    await eventually(all_back, what="the redriven letters dead-lettered again")
    left = await list_dead_letters(events.settings, events.database.sessions, "fragile")
    assert sorted((letter.message_id, letter.redriven) for letter in left) == sorted(
        (event.id, 1) for event in letters
    )
    assert set(tried) == {event.id for event in letters}


async def test_concurrent_readers_of_one_dlq_each_see_all_of_it(events: EventStack) -> None:
    await stuck(events, 11)
    sessions = events.database.sessions
    selection = Selection(group=GROUP)
    scans, counts = await asyncio.gather(
        asyncio.gather(*(scan(events.settings, sessions, "fragile") for _ in range(3))),
        asyncio.gather(
            *(redrive(events.settings, sessions, "fragile", selection, dry_run=True) for _ in range(3))
        ),
    )
    assert [len(found.letters) for found in scans] == [11, 11, 11]
    assert [counted.matched for counted in counts] == [11, 11, 11]


async def test_a_reader_of_a_held_dlq_is_told_it_is_busy(
    events: EventStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = await stuck(events, 2, "analytics")
    monkeypatch.setattr(dlq_queue, "BUSY_WAIT_SECONDS", 0.5)
    async with dlq_queue._exclusive(events.database.sessions, "analytics"):
        with pytest.raises(DeadLetterQueueBusy, match="another operator is reading"):
            await scan(events.settings, events.database.sessions, "analytics")
        # Another process (the CLI waits `BUSY_WAIT_SECONDS` in full, then exits 75).
        busy = await cli(events, "dlq", "redrive", "analytics", "--all", "--yes", status=75)
        assert "busy: another operator is reading the dead-letter queue of analytics" in busy
        # Another reactor's DLQ is not held.
        assert (await scan(events.settings, events.database.sessions, "fragile")).letters == []
    after = await list_dead_letters(events.settings, events.database.sessions, "analytics")
    assert [letter.message_id for letter in after] == [event.id for event in letters]


async def test_the_cli_prints_dead_letter_text_as_it_is(events: EventStack) -> None:
    event = shipped_event()
    reason = r"bad type [bold]x[/bold] ~ '^[a-z]+(\.[a-z_]+)+$'"
    await dead_letter(events, event, "analytics", reason)
    listed = await cli(events, "dlq", "groups", "analytics")
    assert r"bad type [bold]x[/bold] ~ '^[a-z]+(\.[a-z_]+)+$'" in listed
