"""Operators' recovery tools against the REAL RabbitMQ and databases: dead letters redriven by failure group
and by filter (still deduplicated), and event replays to one reactor (backfill, re-apply after a reset,
refusal)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, ReceivedEvent
from messaging.headers import DeadLetterHeaders, ReplayHeaders
from reactors import replay
from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.analytics.reactor import REACTOR as ANALYTICS
from reactors.base import Reactor
from reactors.dlq import Selection, group, inspect, list_dead_letters, redrive, scan
from reactors.dlq.letters import failure_signature, group_id
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import DeliveryOutcome, ReplayMode
from reactors.notification.reactor import REACTOR as NOTIFICATION
from reactors.replay import ReplayRefused, ReplaySelection, SelectionInvalid
from tests.events import cancelled_event, shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import dead_letter, in_outbox, publish

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def refusing_reactor(refused: set[str]) -> Reactor:
    """A test-only reactor whose downstream refuses the orders in `refused` (transient, until cleared)."""

    async def apply(event: ReceivedEvent, _session: AsyncSession) -> None:
        if event.subject in refused:
            raise ConnectionError(f"downstream refuses order {event.subject}")

    return Reactor(name="fragile", routing_keys=("order.shipped.v1",), apply=apply)


async def test_a_failure_group_is_redriven_whole_and_the_other_groups_stay(events: EventStack) -> None:
    stuck = [shipped_event() for _ in range(3)]
    refused = {event.subject for event in stuck}
    await events.start_reactor(refusing_reactor(refused))
    for event in stuck:
        await publish(events, event)
    await publish(events, body=b"{not json", message_id="not-json")

    async def all_dead() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.DEAD_LETTERED)) == 4

    await eventually(all_dead, what="three refused orders and one bad message dead-lettered")
    groups = group((await scan(events.settings, events.database.sessions, "fragile")).letters)
    assert [g.count for g in groups] == [3, 1]
    refusals = groups[0]
    assert refusals.signature == (
        "gave up after <n> attempt(s): ConnectionError: downstream refuses order <id>"
    )
    assert refusals.event_types == ("order.shipped.v1",)

    # The dry run counts, and moves nothing.
    by_group = Selection(group=refusals.id)
    dry = await redrive(events.settings, events.database.sessions, "fragile", by_group, dry_run=True)
    assert (dry.matched, dry.redriven) == (3, [])
    assert len(await list_dead_letters(events.settings, events.database.sessions, "fragile")) == 4

    refused.clear()  # the downstream is fixed
    done = await redrive(events.settings, events.database.sessions, "fragile", by_group, actor="alice")
    assert sorted(done.redriven) == sorted(event.id for event in stuck)

    async def processed() -> bool:
        return len(await events.ledger("fragile", DeliveryOutcome.PROCESSED)) == 3

    await eventually(processed, what="the redriven group processed")
    [left] = await list_dead_letters(events.settings, events.database.sessions, "fragile")
    assert left.message_id == "not-json"
    redriven = await events.ledger("fragile", DeliveryOutcome.REDRIVEN)
    assert len(redriven) == 3 and all("by alice" in (row.detail or "") for row in redriven)


async def test_a_filtered_redrive_takes_what_matches_and_a_redriven_duplicate_has_no_second_effect(
    events: EventStack,
) -> None:
    await events.start_reactor(LOYALTY)
    applied = shipped_event(customer_id="cust-dedup")
    await publish(events, applied)

    async def credited() -> bool:
        balance = await events.read(lambda s: s.get(LoyaltyBalance, "cust-dedup"))
        return balance is not None and balance.points == 20

    await eventually(credited, what="the event applied once")
    # A copy of that applied event, and an older dead letter of another order, sit in the DLQ.
    old = datetime.now(UTC) - timedelta(days=2)
    other = shipped_event(customer_id="cust-old")
    await dead_letter(events, applied, "loyalty", "TimeoutError: database statement timeout")
    await dead_letter(events, other, "loyalty", "TimeoutError: database statement timeout", at=old)

    detail = await inspect(events.settings, events.database.sessions, "loyalty", applied.id)
    assert detail is not None and detail.payload["subject"] == applied.subject
    assert detail.headers[DeadLetterHeaders.REASON] == "TimeoutError: database statement timeout"

    recent = Selection(
        event_type="order.shipped.v1", reason="statement TIMEOUT", since=old + timedelta(days=1)
    )
    assert (
        await redrive(events.settings, events.database.sessions, "loyalty", Selection(reason="nope"))
    ).matched == 0
    done = await redrive(events.settings, events.database.sessions, "loyalty", recent)
    assert done.redriven == [applied.id]

    async def ignored() -> bool:
        return len(await events.ledger("loyalty", DeliveryOutcome.DUPLICATE_IGNORED)) == 1

    await eventually(ignored, what="the redriven copy deduplicated by the inbox")
    assert (await events.read(lambda s: s.get(LoyaltyBalance, "cust-dedup"))).points == 20
    assert await events.count(LoyaltyLedgerEntry, LoyaltyLedgerEntry.customer_id == "cust-dedup") == 1
    [left] = await list_dead_letters(events.settings, events.database.sessions, "loyalty")
    assert left.message_id == other.id  # outside the time range: still there


async def settled(events: EventStack, replay_id: str) -> replay.ReplayStatus:
    async def done() -> bool:
        return (await replay.status(events.database.sessions, replay_id)).done

    await eventually(done, what=f"replay {replay_id} settled")
    return await replay.status(events.database.sessions, replay_id)


async def test_a_backfill_applies_what_the_reactor_missed_and_skips_what_it_applied(
    events: EventStack,
) -> None:
    await events.start_reactor(LOYALTY)
    seen, missed = shipped_event(customer_id="cust-seen"), shipped_event(customer_id="cust-missed")
    unrelated = cancelled_event()  # loyalty does not bind order.cancelled.v1
    await in_outbox(events, seen, missed, unrelated)
    await publish(events, seen)  # delivered at the time; `missed` never reached loyalty
    await eventually(
        lambda: _points(events, "cust-seen", 20), what="the event loyalty saw at the time, applied"
    )

    selection = ReplaySelection(order_ids=(seen.subject, missed.subject, unrelated.subject))
    async with events.database.sessions() as session:
        plan = await replay.plan(session, LOYALTY, ReplayMode.BACKFILL, selection)
    assert (plan.total, plan.applied_before, plan.would_apply, plan.would_skip) == (2, 1, 1, 1)
    assert plan.by_type == {"order.shipped.v1": 2}

    progress: list[tuple[int, int]] = []
    started = await replay.start(
        events.settings,
        events.database.sessions,
        LOYALTY,
        ReplayMode.BACKFILL,
        selection,
        actor="bob",
        progress=lambda done, total: progress.append((done, total)),
    )
    assert (started.state, started.published, progress[-1]) == ("published", 2, (2, 2))
    finished = await settled(events, started.id)
    assert (finished.applied, finished.skipped) == (1, 1)
    assert await _points(events, "cust-missed", 20) and await _points(events, "cust-seen", 20)
    assert await events.count(LoyaltyLedgerEntry) == 2
    replayed = await events.ledger("loyalty", DeliveryOutcome.REPLAYED)
    assert sorted(str(row.subject) for row in replayed) == sorted([seen.subject, missed.subject])
    assert await events.ledger("analytics") == []  # published to loyalty's queue only
    details = {
        row.subject: row.detail
        for row in await events.ledger("loyalty")
        if row.outcome in (DeliveryOutcome.PROCESSED, DeliveryOutcome.DUPLICATE_IGNORED) and row.detail
    }
    assert details[missed.subject] == f"replayed (backfill {started.id})"
    assert details[seen.subject] == f"replayed (backfill {started.id}): applied before, skipped"
    # Causal order: the copy handed to the broker ("replayed"), then its delivery (one ledger row: the
    # outcome, received `duration_ms` before it).
    rows = sorted(
        (r for r in await events.ledger("loyalty") if r.message_id == seen.id), key=lambda r: r.created_at
    )
    assert [row.outcome for row in rows] == [
        DeliveryOutcome.PROCESSED,
        DeliveryOutcome.REPLAYED,
        DeliveryOutcome.DUPLICATE_IGNORED,
    ]
    _, handed, ignored = rows
    assert ignored.created_at - timedelta(milliseconds=ignored.duration_ms or 0) >= handed.created_at


async def test_a_reapply_resets_the_effects_then_applies_once_past_the_inbox(events: EventStack) -> None:
    await events.start_reactors([LOYALTY, ANALYTICS])
    shipped = shipped_event(customer_id="cust-fix")
    await in_outbox(events, shipped)
    await publish(events, shipped)
    await eventually(lambda: _points(events, "cust-fix", 20), what="applied at the time")
    await eventually(lambda: _shipped_count(events, shipped, 1), what="counted at the time")
    # A bug at the time credited 5 points instead of 20: what the re-apply must reverse.
    async with events.database.sessions() as session, session.begin():
        await session.execute(
            update(LoyaltyLedgerEntry).where(LoyaltyLedgerEntry.event_id == shipped.id).values(points=5)
        )
        await session.execute(
            update(LoyaltyBalance).where(LoyaltyBalance.customer_id == "cust-fix").values(points=5)
        )

    selection = ReplaySelection(order_ids=(shipped.subject,))
    async with events.database.sessions() as session:
        plan = await replay.plan(session, LOYALTY, ReplayMode.REAPPLY, selection)
    assert (plan.total, plan.would_reset, plan.would_apply) == (1, 1, 1)
    run = await replay.start(
        events.settings, events.database.sessions, LOYALTY, ReplayMode.REAPPLY, selection, actor="carol"
    )
    assert (await settled(events, run.id)).applied == 1
    assert await _points(events, "cust-fix", 20)
    assert await events.count(LoyaltyLedgerEntry, LoyaltyLedgerEntry.customer_id == "cust-fix") == 1

    # Another copy of the replay's message (a redelivery) finds the grant claimed: no second effect.
    await publish(
        events,
        shipped,
        exchange="",
        routing_key=events.topology.queue("loyalty"),
        headers={ReplayHeaders.ID: run.id, ReplayHeaders.MODE: ReplayMode.REAPPLY},
    )

    async def duplicate() -> bool:
        return len(await events.ledger("loyalty", DeliveryOutcome.DUPLICATE_IGNORED)) == 1

    await eventually(duplicate, what="the second copy ignored")
    assert await _points(events, "cust-fix", 20)
    processed = await events.ledger("loyalty", DeliveryOutcome.PROCESSED)
    assert [row.detail for row in processed] == [
        None,
        f"replayed (re-apply {run.id}): earlier effects reset first",
    ]

    # Analytics subtracts, then adds: the day's figures are what they were, once.
    again = await replay.start(
        events.settings, events.database.sessions, ANALYTICS, ReplayMode.REAPPLY, selection, actor="carol"
    )
    assert (await settled(events, again.id)).applied == 1
    assert await _shipped_count(events, shipped, 1)
    sales = await events.read(lambda s: s.get(DailySkuSales, (shipped.time.date(), "SKU-A", "EUR")))
    assert (sales.units, sales.revenue) == (2, 2_000)


async def test_the_notification_refuses_a_reapply_and_a_replay_needs_a_selection(events: EventStack) -> None:
    shipped = shipped_event()
    await in_outbox(events, shipped)
    selection = ReplaySelection(order_ids=(shipped.subject,))
    async with events.database.sessions() as session:
        with pytest.raises(ReplayRefused, match="a mail cannot be unsent"):
            await replay.plan(session, NOTIFICATION, ReplayMode.REAPPLY, selection)
        with pytest.raises(SelectionInvalid, match="choose the events"):
            await replay.plan(session, LOYALTY, ReplayMode.BACKFILL, ReplaySelection())
        backfill = await replay.plan(session, NOTIFICATION, ReplayMode.BACKFILL, selection)
    assert (backfill.total, backfill.would_apply) == (1, 1)
    with pytest.raises(ReplayRefused):
        await replay.start(
            events.settings, events.database.sessions, NOTIFICATION, ReplayMode.REAPPLY, selection, actor="x"
        )
    assert await replay.recent(events.database.sessions) == []  # nothing recorded


async def _points(events: EventStack, customer_id: str, points: int) -> bool:
    balance = await events.read(lambda s: s.get(LoyaltyBalance, customer_id))
    return balance is not None and balance.points == points


async def _shipped_count(events: EventStack, event: CloudEvent, count: int) -> bool:
    counts = await events.read(lambda s: s.get(DailyOrderCounts, event.time.astimezone(UTC).date()))
    return counts is not None and counts.orders_shipped == count


async def cli(events: EventStack, *args: str, status: int = 0) -> str:
    """`order-saga ARGS...` in a process of its own, on the test's database and broker namespace."""
    env = {
        **os.environ,
        "DATABASE_URL": events.settings.database_url,
        "RABBITMQ_URL": events.settings.rabbitmq_url,
        "BROKER_NAMESPACE": events.settings.broker_namespace,
        "COLUMNS": "200",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "entrypoints.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stdout + done.stderr
    return done.stdout + done.stderr


async def test_the_cli_redrives_a_group_and_replays_an_order_to_one_reactor(events: EventStack) -> None:
    await events.start_reactor(LOYALTY)
    shipped, stranded = shipped_event(customer_id="cust-cli-1"), shipped_event(customer_id="cust-cli-2")
    await in_outbox(events, shipped)
    await publish(events, shipped)
    await eventually(lambda: _points(events, "cust-cli-1", 20), what="applied at the time")
    reason = f"TimeoutError: lock timeout on order {stranded.subject}"
    await dead_letter(events, stranded, "loyalty", reason)
    failure = group_id(failure_signature(reason))

    assert "TimeoutError: lock timeout on order <id>" in await cli(events, "dlq", "groups", "loyalty")
    counted = await cli(events, "dlq", "redrive", "loyalty", "--group", failure, "--dry-run")
    assert f"1 dead letter(s) of loyalty match (group {failure})" in counted
    assert "redrove 1 message(s) to loyalty" in await cli(
        events, "dlq", "redrive", "loyalty", "--group", failure, "--yes"
    )
    await eventually(lambda: _points(events, "cust-cli-2", 20), what="the redriven event applied")

    order = ("--order", shipped.subject)
    planned = await cli(events, "replay", "plan", "loyalty", "--mode", "reapply", *order)
    assert "would apply 1, skip 0 (applied before), reset first 1" in planned
    ran = await cli(events, "replay", "run", "loyalty", "--mode", "reapply", *order, "--yes")
    assert "published 1/1" in ran and "applied 1, skipped 0" in ran and "done" in ran
    assert ran.count(", done") == 1  # the final status once
    assert await _points(events, "cust-cli-1", 20)
    refused = await cli(
        events, "replay", "run", "notification", "--mode", "reapply", *order, "--yes", status=1
    )
    assert "a mail cannot be unsent" in refused
