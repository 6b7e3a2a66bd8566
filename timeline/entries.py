"""The per-order timeline's entries: what happened to one order, across the workflow engine and the broker.

Three sources, each turned into typed entries by a pure function, then merged into one chronological list:

- the saga's Temporal history (`timeline.history`: `history_entries`, plus `pending_step_entries` for a step
  that is retrying right now, which the history only records once it ends): steps scheduled, started,
  completed or failed, with attempts and durations; local steps (markers); compensations; cancel requests;
  the status it mirrors;
- the outbox rows of the order (`timeline.records.outbox_entries`): event recorded, published, publish
  attempts and errors;
- the reactors' delivery ledger (`timeline.records.delivery_entries`): received, processed, duplicate
  ignored, retry scheduled, dead-lettered, redriven, replayed (an operator's replay published it again to
  that reactor; its `processed` or `duplicate ignored` row then says "replayed" too).

No I/O in these modules: `timeline.sources` reads the history from the Temporal server (so a restarted or
replaced worker changes nothing) and the two tables; `timeline.render` draws it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

MAX_TEXT = 500


class Source(StrEnum):
    WORKFLOW = "workflow"
    OUTBOX = "outbox"
    REACTOR = "reactor"


# Equal timestamps: the cause before its effects.
_SOURCE_RANK = {Source.WORKFLOW: 0, Source.OUTBOX: 1, Source.REACTOR: 2}


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened to the order. `kind` is dotted (`step.completed`, `delivery.processed`)."""

    at: datetime
    source: Source
    actor: str  # "saga", "outbox" or the reactor's name
    kind: str
    summary: str
    step: str | None = None
    attempt: int | None = None
    duration_ms: float | None = None
    detail: str | None = None
    event_id: str | None = None
    trace_id: str | None = None
    seq: int = 0  # order within its source: history event id, ledger row id


@dataclass(frozen=True)
class Timeline:
    order_id: str
    workflow_id: str
    entries: tuple[TimelineEntry, ...]
    # What could not be read (say, no workflow history); the entries are what could.
    warnings: tuple[str, ...] = ()


def merge_timeline(*sources: Iterable[TimelineEntry]) -> list[TimelineEntry]:
    """One chronological list; ties broken by source (workflow, outbox, reactors), then by source order."""
    entries = [entry for source in sources for entry in source]
    return sorted(entries, key=lambda e: (e.at, _SOURCE_RANK[e.source], e.actor, e.seq))


def elapsed_ms(start: datetime | None, end: datetime) -> float | None:
    """Milliseconds from `start` to `end` (None without a start)."""
    return round((end - start).total_seconds() * 1000, 3) if start is not None else None


def clip(text: str | None) -> str | None:
    """`text` cut to MAX_TEXT characters, so one noisy error cannot flood a timeline."""
    if text is None:
        return None
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
