"""The outbox rows and the reactors' delivery ledger of one order, as timeline entries (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from observability.tracing import trace_id_of
from timeline.entries import Source, Timeline, TimelineEntry, clip, elapsed_ms, merge_timeline

OUTBOX_ACTOR = "outbox"

View = TypeVar("View", "OutboxView", "DeliveryView")


@dataclass(frozen=True)
class OutboxView:
    """An outbox row, as the timeline needs it."""

    id: str
    event_type: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    published_at: datetime | None
    traceparent: str | None = None
    confirm_ms: float | None = None


@dataclass(frozen=True)
class DeliveryView:
    """A delivery ledger row, as the timeline needs it."""

    id: int
    consumer: str
    message_id: str
    event_type: str | None
    outcome: str
    attempt: int
    detail: str | None
    created_at: datetime
    duration_ms: float | None = None
    trace_id: str | None = None


def view_of(view: type[View], row: object) -> View:
    """The view's fields read from a row (an ORM object) with the same attribute names."""
    return view(**{field.name: getattr(row, field.name) for field in fields(view)})


def outbox_entries(rows: Iterable[OutboxView]) -> list[TimelineEntry]:
    entries = []
    for row in rows:
        trace_id = trace_id_of(row.traceparent)
        common: dict[str, Any] = {
            "source": Source.OUTBOX,
            "actor": OUTBOX_ACTOR,
            "event_id": row.id,
            "trace_id": trace_id,
        }
        entries.append(
            TimelineEntry(
                at=row.created_at,
                kind="event.recorded",
                summary=f"{row.event_type} recorded in the outbox",
                detail=f"event {row.id}",
                seq=0,
                **common,
            )
        )
        if row.published_at is not None:
            retried = row.attempts > 1
            details = [f"sent {elapsed_ms(row.created_at, row.published_at):.0f} ms after it was recorded"]
            if row.confirm_ms is not None:
                details.append(f"confirmed by the broker in {row.confirm_ms:.1f} ms")
            if retried and row.last_error:
                details.append(f"last failed attempt: {clip(row.last_error)}")
            entries.append(
                TimelineEntry(
                    at=row.published_at,
                    kind="event.published",
                    summary=f"{row.event_type} published"
                    + (f" after {row.attempts} attempts" if retried else ""),
                    attempt=row.attempts,
                    duration_ms=row.confirm_ms,
                    detail="; ".join(details),
                    seq=2,
                    **common,
                )
            )
        elif row.attempts > 0:
            entries.append(
                TimelineEntry(
                    at=row.last_attempt_at or row.created_at,
                    kind="event.publish_failed",
                    summary=f"{row.event_type} not published yet: attempt {row.attempts} failed",
                    attempt=row.attempts,
                    detail=clip(row.last_error),
                    seq=1,
                    **common,
                )
            )
    return entries


_DELIVERY_SUMMARIES = {
    "received": "received",
    "processed": "processed",
    "duplicate_ignored": "duplicate ignored",
    "retry_scheduled": "retry scheduled",
    "dead_lettered": "dead-lettered",
    "redriven": "redriven from the DLQ",
    "retry_recovered": "retry lost by the broker, re-driven from the outbox",
    "replayed": "replayed from the outbox",
}


# Outcomes whose ledger row also stands for the delivery's receipt (`created_at - duration_ms`).
_SETTLED = frozenset({"processed", "duplicate_ignored", "retry_scheduled", "dead_lettered"})


def delivery_entries(rows: Iterable[DeliveryView]) -> list[TimelineEntry]:
    """One entry per ledger row, plus a `delivery.received` entry per settled delivery: the runtime writes
    one row per delivery (its outcome, with the duration since receipt); rows written before that came in
    pairs, whose `received` row is used as it is."""
    rows = list(rows)
    recorded = {(row.consumer, row.message_id, row.attempt) for row in rows if row.outcome == "received"}
    entries = []
    for row in rows:
        if (
            row.outcome in _SETTLED
            and row.duration_ms is not None
            and (row.consumer, row.message_id, row.attempt) not in recorded
        ):
            entries.append(
                _delivery_entry(row, "received", row.created_at - timedelta(milliseconds=row.duration_ms))
            )
        entries.append(_delivery_entry(row, row.outcome, row.created_at, row.duration_ms, row.detail))
    return entries


def _delivery_entry(
    row: DeliveryView,
    outcome: str,
    at: datetime,
    duration_ms: float | None = None,
    detail: str | None = None,
) -> TimelineEntry:
    return TimelineEntry(
        at=at,
        source=Source.REACTOR,
        actor=row.consumer,
        kind=f"delivery.{outcome}",
        summary=f"{row.consumer}: {row.event_type or 'message'} {_DELIVERY_SUMMARIES.get(outcome, outcome)}",
        attempt=row.attempt,
        duration_ms=duration_ms,
        detail=clip(detail),
        event_id=row.message_id,
        trace_id=row.trace_id,
        seq=row.id,
    )


def build_timeline(
    order_id: str,
    workflow_id: str,
    *,
    history: Sequence[TimelineEntry] = (),
    outbox: Iterable[OutboxView] = (),
    deliveries: Iterable[DeliveryView] = (),
    warnings: Sequence[str] = (),
) -> Timeline:
    entries = merge_timeline(history, outbox_entries(outbox), delivery_entries(deliveries))
    return Timeline(order_id, workflow_id, tuple(entries), tuple(warnings))
