"""The console's journey chart, pure: recorded saga histories and ledger rows laid out as swimlanes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory

from api.console.journey import LABEL_WIDTH, RIGHT_MARGIN, WIDTH, Journey, Lane, build_journey, text_width
from tests.conftest import HISTORIES
from timeline.entries import Source, TimelineEntry
from timeline.history import history_entries
from timeline.records import DeliveryView, OutboxView, build_timeline

pytestmark = pytest.mark.unit

REACTORS = ("notification", "loyalty", "analytics")


def recorded(name: str) -> list[TimelineEntry]:
    path: Path = HISTORIES / f"{name}.json"
    return history_entries(WorkflowHistory.from_json(name, path.read_text()).events)


def lane(journey: Journey, key: str) -> Lane:
    return next(lane for lane in journey.lanes if lane.key == key)


def kinds(found: Lane) -> list[str]:
    return [item.span.kind for item in found.items]


def outbox_and_deliveries(start: datetime) -> tuple[list[OutboxView], list[DeliveryView]]:
    outbox = OutboxView(
        id="evt-1",
        event_type="order.shipped.v1",
        status="published",
        attempts=1,
        last_error=None,
        created_at=start,
        last_attempt_at=start + timedelta(milliseconds=40),
        published_at=start + timedelta(milliseconds=40),
    )

    def delivery(row: int, consumer: str, outcome: str, ms: float, attempt: int = 1) -> DeliveryView:
        return DeliveryView(
            id=row,
            consumer=consumer,
            message_id="evt-1",
            event_type="order.shipped.v1",
            outcome=outcome,
            attempt=attempt,
            detail=None,
            created_at=start + timedelta(milliseconds=ms),
            duration_ms=5.0 if outcome == "processed" else None,
        )

    deliveries = [
        delivery(1, "notification", "received", 50),
        delivery(2, "notification", "retry_scheduled", 60),
        delivery(3, "notification", "received", 1_100, attempt=2),
        delivery(4, "notification", "processed", 1_105, attempt=2),
        delivery(5, "loyalty", "received", 52),
        delivery(6, "loyalty", "processed", 57),
        delivery(7, "loyalty", "duplicate_ignored", 90),
    ]
    return [outbox], deliveries


def test_a_shipped_order_has_a_bar_per_step_the_published_event_and_each_reactor_lane() -> None:
    history = recorded("happy")
    outbox, deliveries = outbox_and_deliveries(history[-1].at)
    timeline = build_timeline("o-1", "order-o-1", history=history, outbox=outbox, deliveries=deliveries)
    journey = build_journey(timeline.entries, REACTORS, now=history[-1].at + timedelta(hours=1))

    assert [found.key for found in journey.lanes] == [
        "saga",
        "outbox",
        "reactor:notification",
        "reactor:loyalty",
        "reactor:analytics",
    ]
    saga = lane(journey, "saga")
    bars = [item for item in saga.items if item.width]
    assert [item.span.label.split(" ")[0] for item in bars] == [
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "mark_order_shipped",
    ]
    assert all(item.span.tone == "ok" for item in bars)
    assert "SHIPPED" in [item.span.label for item in saga.items if not item.width]
    assert kinds(lane(journey, "outbox")) == ["event.published"]
    notification = lane(journey, "reactor:notification")
    assert kinds(notification) == ["delivery.retry_scheduled", "delivery.processed"]
    assert kinds(lane(journey, "reactor:loyalty")) == ["delivery.processed", "delivery.duplicate_ignored"]
    assert lane(journey, "reactor:analytics").items == ()
    # Nothing in flight once the saga ended: the chart ends at its last entry, not "now".
    assert max(item.x + item.width for found in journey.lanes for item in found.items) <= WIDTH
    assert min(item.x for found in journey.lanes for item in found.items) >= LABEL_WIDTH
    assert journey.ticks[0][1] == "+0 ms"


def test_compensations_and_a_failed_step_stand_out() -> None:
    journey = build_journey(recorded("payment_declined"), REACTORS, now=datetime.now(UTC))
    tones = {item.span.kind: item.span.tone for item in lane(journey, "saga").items}
    assert tones["step.failed"] == "fail"
    assert tones["compensation.completed"] == "comp"


def test_a_step_retried_shows_its_attempts_on_its_bar() -> None:
    journey = build_journey(recorded("flaky_payment"), REACTORS, now=datetime.now(UTC))
    charge = next(
        item for item in lane(journey, "saga").items if item.span.label.startswith("charge_payment")
    )
    assert charge.span.label.startswith("charge_payment (3 attempts")
    # The retries take most of the saga's time: the bar spans the chart, so its label goes inside it.
    assert charge.label_at == "inside"


def test_items_and_their_labels_never_overlap_on_a_row() -> None:
    history = recorded("happy")
    outbox, deliveries = outbox_and_deliveries(history[-1].at)
    timeline = build_timeline("o-1", "order-o-1", history=history, outbox=outbox, deliveries=deliveries)
    journey = build_journey(timeline.entries, REACTORS, now=datetime.now(UTC))
    for found in journey.lanes:
        rows: dict[int, list[tuple[float, float]]] = {}
        for item in found.items:
            text = text_width(item.span.label)
            left = item.label_x - text if item.label_at == "before" else item.x
            right = item.label_x + text if item.label_at == "after" else item.x + item.width
            assert item.label_at != "inside" or item.label_x + text <= item.x + item.width
            for other_left, other_right in rows.get(item.row, []):
                assert right <= other_left or left >= other_right, (found.key, item.span.label)
            rows.setdefault(item.row, []).append((left, right))


def test_an_order_in_flight_draws_open_bars_up_to_now() -> None:
    history = recorded("happy")
    cut = next(i for i, e in enumerate(history) if e.kind == "step.started" and e.step == "charge_payment")
    now = history[cut].at + timedelta(seconds=2)
    running = TimelineEntry(
        at=history[cut].at,
        source=Source.WORKFLOW,
        actor="saga",
        kind="step.running",
        summary="charge_payment running (attempt 1)",
        step="charge_payment",
        attempt=1,
    )
    journey = build_journey([*history[: cut + 1], running], REACTORS, now=now)
    charge = next(item for item in lane(journey, "saga").items if item.span.kind == "step.running")
    assert charge.span.tone == "open" and charge.span.end == now
    assert charge.x + charge.width == pytest.approx(WIDTH - RIGHT_MARGIN)
    assert lane(journey, "outbox").items == ()


def test_no_entries_still_draw_every_lane() -> None:
    journey = build_journey([], REACTORS, now=datetime.now(UTC))
    assert [found.key for found in journey.lanes][-1] == "reactor:analytics"
    assert journey.ticks == () and journey.start is None
