"""The per-order timeline, pure: history parsing (recorded histories), outbox and ledger rows, the merge."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from temporalio.api.common.v1 import ActivityType
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowHistory

from tests.conftest import HISTORIES
from timeline.entries import Source, TimelineEntry, merge_timeline
from timeline.history import history_entries, pending_step_entries
from timeline.records import DeliveryView, OutboxView, build_timeline, delivery_entries, outbox_entries
from timeline.render import render_timeline

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def recorded(name: str) -> list[TimelineEntry]:
    path: Path = HISTORIES / f"{name}.json"
    return history_entries(WorkflowHistory.from_json(name, path.read_text()).events)


def kinds(entries: list[TimelineEntry]) -> list[tuple[str, str | None]]:
    return [(entry.kind, entry.step) for entry in entries]


@pytest.mark.parametrize(
    ("history", "local_reserve", "statuses"),
    [
        # The current saga reserves locally and upserts its status at the outcome only (patch lean-saga).
        ("happy", True, ["SHIPPED"]),
        ("v2/happy", False, ["INVENTORY_RESERVED", "PAYMENT_CHARGED", "SHIPPED"]),
    ],
)
def test_a_shipped_saga_shows_its_steps_in_order_the_remote_ones_scheduled_started_completed(
    history: str, local_reserve: bool, statuses: list[str]
) -> None:
    entries = recorded(history)
    steps = [(kind, step) for kind, step in kinds(entries) if step is not None]
    remote = (
        ("charge_payment", "create_shipment")
        if local_reserve
        else ("reserve_inventory", "charge_payment", "create_shipment")
    )
    assert steps == [("local_step.completed", "reserve_inventory")] * local_reserve + [
        (f"step.{phase}", name) for name in remote for phase in ("scheduled", "started", "completed")
    ] + [("local_step.completed", "mark_order_shipped")]
    assert entries[0].kind == "workflow.started" and entries[-1].kind == "workflow.completed"
    assert "status=SHIPPED" in (entries[-1].detail or "")
    assert [entry.summary for entry in entries if entry.kind == "status"] == [f"status {s}" for s in statuses]
    completed = [entry for entry in entries if entry.kind.endswith("completed") and entry.step]
    assert all(entry.duration_ms is not None and entry.duration_ms >= 0 for entry in completed)


def test_a_retried_step_shows_its_attempts_and_the_previous_failure() -> None:
    charge = [entry for entry in recorded("flaky_payment") if entry.step == "charge_payment"]
    assert [entry.kind for entry in charge] == ["step.scheduled", "step.started", "step.completed"]
    started, completed = charge[1], charge[2]
    assert started.attempt == completed.attempt == 3
    assert (
        started.detail == "attempt 2 failed: TransientProviderError: payment provider unavailable (attempt 2)"
    )
    assert completed.summary == "charge_payment completed after 3 attempts"


def test_a_business_failure_shows_the_failed_step_then_the_compensations_in_reverse() -> None:
    entries = recorded("payment_declined")
    [failed] = [entry for entry in entries if entry.kind == "step.failed"]
    assert failed.step == "charge_payment"
    assert failed.detail == "PAYMENT_DECLINED: the card was declined"  # its cause says the same: once
    compensations = [
        (entry.step, entry.detail) for entry in entries if entry.kind == "compensation.completed"
    ]
    # What each compensation answered: nothing had been charged, the reservation was released.
    assert compensations == [("refund_payment", "nothing charged"), ("release_inventory", "released 1")]
    local = [entry.step for entry in entries if entry.kind == "local_step.completed"]
    assert local == ["reserve_inventory", "mark_order_status", "close_order"]
    assert "failure_reason=PAYMENT_DECLINED" in (entries[-1].detail or "")


def test_cancel_requests_by_update_and_by_workflow_cancel_are_shown() -> None:
    by_update = recorded("cancel_while_charging")
    requested = [entry for entry in by_update if entry.kind.startswith("cancel.")]
    assert [(entry.kind, entry.detail) for entry in requested] == [
        ("cancel.requested", "found it cheaper"),
        ("cancel.accepted", "cancel accepted; compensating"),
    ]
    by_workflow_cancel = recorded("workflow_cancelled")
    assert [entry.summary for entry in by_workflow_cancel if entry.kind == "cancel.requested"] == [
        "workflow cancel requested"
    ]
    assert ("step.cancel_requested", "charge_payment") in kinds(by_workflow_cancel)
    assert by_workflow_cancel[-1].kind == "workflow.canceled"


def test_a_step_retrying_right_now_shows_its_last_failure_and_next_attempt() -> None:
    info = PendingActivityInfo(
        activity_type=ActivityType(name="charge_payment"),
        attempt=3,
        last_failure=Failure(message="payment provider unavailable"),
    )
    info.last_attempt_complete_time.FromDatetime(at(500).replace(tzinfo=None))
    info.next_attempt_schedule_time.FromDatetime(at(1500).replace(tzinfo=None))
    running = PendingActivityInfo(activity_type=ActivityType(name="release_inventory"), attempt=1)
    running.last_started_time.CopyFrom(Timestamp(seconds=int(at(0).timestamp())))
    retrying, first = pending_step_entries([info, running], now=at(2000))
    assert (retrying.kind, retrying.at, retrying.attempt) == ("step.retrying", at(500), 3)
    assert retrying.summary == "charge_payment attempt 2 failed, retrying"
    assert retrying.detail is not None and "next attempt 3 at 2026-01-05T10:00:01.500000" in retrying.detail
    assert (first.kind, first.at) == ("compensation.running", at(0))


def test_outbox_rows_show_recorded_published_and_failed_attempts() -> None:
    published = OutboxView(
        id="e-1",
        event_type="order.shipped.v1",
        status="published",
        attempts=3,
        last_error="broker unavailable: ConnectionError",
        created_at=at(0),
        last_attempt_at=at(900),
        published_at=at(900),
        traceparent=TRACEPARENT,
        confirm_ms=2.5,
    )
    pending = OutboxView(
        id="e-2",
        event_type="order.cancelled.v1",
        status="pending",
        attempts=2,
        last_error="PublishError: unroutable",
        created_at=at(10),
        last_attempt_at=at(600),
        published_at=None,
    )
    entries = outbox_entries([published, pending])
    assert [(entry.kind, entry.at, entry.event_id) for entry in entries] == [
        ("event.recorded", at(0), "e-1"),
        ("event.published", at(900), "e-1"),
        ("event.recorded", at(10), "e-2"),
        ("event.publish_failed", at(600), "e-2"),
    ]
    assert entries[1].summary == "order.shipped.v1 published after 3 attempts"
    assert entries[1].duration_ms == 2.5 and entries[1].detail == (
        "sent 900 ms after it was recorded; confirmed by the broker in 2.5 ms; "
        "last failed attempt: broker unavailable: ConnectionError"
    )
    assert entries[0].trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert entries[3].detail == "PublishError: unroutable" and entries[2].trace_id is None


def test_ledger_rows_name_each_outcome() -> None:
    outcomes = ["received", "processed", "duplicate_ignored", "retry_scheduled", "dead_lettered", "redriven"]
    rows = [
        DeliveryView(
            id=number,
            consumer="loyalty",
            message_id="e-1",
            event_type="order.shipped.v1",
            outcome=outcome,
            attempt=1,
            detail=None,
            created_at=at(number),
            duration_ms=4.5 if outcome != "received" else None,
        )
        for number, outcome in enumerate(outcomes)
    ]
    entries = delivery_entries(rows)
    assert [entry.kind for entry in entries] == [f"delivery.{outcome}" for outcome in outcomes]
    assert [entry.summary.removeprefix("loyalty: order.shipped.v1 ") for entry in entries] == [
        "received",
        "processed",
        "duplicate ignored",
        "retry scheduled",
        "dead-lettered",
        "redriven from the DLQ",
    ]
    assert {entry.actor for entry in entries} == {"loyalty"}
    assert all(entry.source == Source.REACTOR for entry in entries)


def test_the_merge_is_chronological_whatever_the_input_order_and_causes_come_first_on_ties() -> None:
    workflow = [
        TimelineEntry(at(0), Source.WORKFLOW, "saga", "workflow.started", "started", seq=1),
        TimelineEntry(at(5), Source.WORKFLOW, "saga", "local_step.completed", "shipped", seq=25),
        TimelineEntry(at(5), Source.WORKFLOW, "saga", "status", "status SHIPPED", seq=26),
    ]
    outbox = [TimelineEntry(at(5), Source.OUTBOX, "outbox", "event.recorded", "recorded")]
    reactors = [
        TimelineEntry(at(7), Source.REACTOR, "notification", "delivery.received", "r", seq=3),
        TimelineEntry(at(7), Source.REACTOR, "analytics", "delivery.received", "r", seq=4),
        TimelineEntry(at(6), Source.REACTOR, "loyalty", "delivery.received", "r", seq=1),
    ]
    expected = [workflow[0], workflow[1], workflow[2], outbox[0], reactors[2], reactors[1], reactors[0]]
    assert merge_timeline(workflow, outbox, reactors) == expected
    shuffled = [*workflow, *outbox, *reactors]
    random.Random(7).shuffle(shuffled)
    assert merge_timeline(shuffled) == expected


def test_a_whole_timeline_interleaves_the_three_sources_and_renders() -> None:
    history = recorded("happy")
    shipped_at = next(entry.at for entry in history if entry.step == "mark_order_shipped")
    outbox = OutboxView(
        id="e-1",
        event_type="order.shipped.v1",
        status="published",
        attempts=1,
        last_error=None,
        created_at=shipped_at - timedelta(milliseconds=1),
        last_attempt_at=shipped_at + timedelta(milliseconds=40),
        published_at=shipped_at + timedelta(milliseconds=40),
    )
    ledger = [
        DeliveryView(
            n,
            reactor,
            "e-1",
            "order.shipped.v1",
            outcome,
            1,
            None,
            shipped_at + timedelta(milliseconds=50 + n),
        )
        for n, (reactor, outcome) in enumerate(
            [(r, o) for r in ("notification", "loyalty", "analytics") for o in ("received", "processed")]
        )
    ]
    timeline = build_timeline("o-1", "order-o-1", history=history, outbox=[outbox], deliveries=ledger)
    sources = [entry.source for entry in timeline.entries]
    # The event is written by the last step (inside it), published, then delivered; the saga ends between.
    assert sources.index(Source.OUTBOX) < sources.index(Source.REACTOR)
    assert timeline.entries[0].kind == "workflow.started"
    assert [entry.at for entry in timeline.entries] == sorted(entry.at for entry in timeline.entries)
    assert sum(entry.kind == "delivery.processed" for entry in timeline.entries) == 3

    console = Console(record=True, width=200)
    console.print(render_timeline(timeline))
    text = console.export_text()
    assert "Order o-1 (order-o-1)" in text
    for expected in ("charge_payment completed", "order.shipped.v1 published", "loyalty: order.shipped.v1"):
        assert expected in text
    empty = Console(record=True, width=120)
    empty.print(render_timeline([], title="nothing"))
    assert "nothing recorded for this order yet" in empty.export_text()


def test_a_one_row_delivery_shows_its_receipt_from_its_duration() -> None:
    """The ledger writes one row per delivery (its outcome and the time since receipt); the timeline shows
    the receipt too, at `created_at - duration_ms`. Rows of the older two-row layout are shown as they are."""
    one_row = DeliveryView(7, "loyalty", "e-1", "order.shipped.v1", "processed", 1, None, at(5), 250.0)
    retried = DeliveryView(
        8, "notification", "e-1", "order.shipped.v1", "retry_scheduled", 1, "451", at(6), 4.0
    )
    recovered = DeliveryView(9, "notification", "e-1", "order.shipped.v1", "retry_recovered", 2, None, at(9))
    entries = delivery_entries([one_row, retried, recovered])
    assert [(entry.kind, entry.at, entry.duration_ms) for entry in entries] == [
        ("delivery.received", at(5) - timedelta(milliseconds=250), None),
        ("delivery.processed", at(5), 250.0),
        ("delivery.received", at(6) - timedelta(milliseconds=4), None),
        ("delivery.retry_scheduled", at(6), 4.0),
        ("delivery.retry_recovered", at(9), None),
    ]
    assert entries[0].summary == "loyalty: order.shipped.v1 received" and entries[0].detail is None

    two_rows = [
        DeliveryView(1, "loyalty", "e-1", "order.shipped.v1", "received", 1, None, at(4)),
        DeliveryView(2, "loyalty", "e-1", "order.shipped.v1", "processed", 1, None, at(5), 250.0),
    ]
    assert [entry.kind for entry in delivery_entries(two_rows)] == ["delivery.received", "delivery.processed"]


def test_data_in_a_rendered_timeline_prints_as_it_is_not_as_markup() -> None:
    row = DeliveryView(
        id=1,
        consumer="loyalty",
        message_id="e-1",
        event_type="order.shipped.v1",
        outcome="dead_lettered",
        attempt=1,
        detail=r"bad type [bold]x[/bold] ~ '^[a-z]+(\.[a-z_]+)+$'",
        created_at=at(1),
        duration_ms=None,
    )
    console = Console(record=True, width=200)
    console.print(render_timeline(delivery_entries([row]), title="order [red]o-1[/red]"))
    text = console.export_text()
    assert r"bad type [bold]x[/bold] ~ '^[a-z]+(\.[a-z_]+)+$'" in text
    assert "order [red]o-1[/red]" in text
