"""The journey of one order as a swimlane chart: its timeline laid out over time (pure, no I/O).

Lanes, top to bottom: the saga (each step and compensation as a bar from scheduled to its end, with its
attempts and duration; local steps; status changes and cancel requests as marks), the outbox (each event
from recorded to published), then one lane per reactor (each delivery from received to its outcome;
duplicates, retries, dead letters and redrives as marks). The input is the order's timeline entries, the
same as `GET /orders/{id}/timeline`; `templates/_journey.svg` draws the result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

# Geometry of the SVG, in its own units (it scales to the page's width).
WIDTH = 1100
LABEL_WIDTH = 150
RIGHT_MARGIN = 16
ROW_HEIGHT = 22
LANE_PADDING = 6
AXIS_HEIGHT = 24
# Advance widths of the 11px sans-serif label font, generous, for packing labels without overlap.
WIDE_CHAR, NARROW_CHAR, CHAR = 7.8, 3.6, 6.4
MIN_BAR = 3.0

Tone = Literal["ok", "fail", "comp", "warn", "info", "open"]
_STEP_PREFIXES = ("step.", "compensation.", "local_step.")
_STEP_ENDS: dict[str, Tone] = {"completed": "ok", "failed": "fail", "timed_out": "fail", "canceled": "warn"}
_WORKFLOW_ENDS = frozenset(
    f"workflow.{end}"
    for end in ("completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new")
)
_DELIVERY_MARKS: dict[str, Tone] = {
    "duplicate_ignored": "warn",
    "retry_scheduled": "warn",
    "dead_lettered": "fail",
    "redriven": "info",
    "retry_recovered": "info",
}


class Entry(Protocol):
    """A timeline entry (`timeline.entries.TimelineEntry` or the API's `TimelineEntryOut`)."""

    @property
    def at(self) -> datetime: ...
    @property
    def source(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def step(self) -> str | None: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def duration_ms(self) -> float | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def event_id(self) -> str | None: ...


@dataclass(frozen=True)
class Span:
    """A bar (`end` set) or a mark (`end` None) on a lane; `title` is its tooltip."""

    start: datetime
    end: datetime | None
    label: str
    tone: Tone
    title: str
    kind: str


@dataclass(frozen=True)
class Placed:
    span: Span
    x: float
    width: float  # 0 for a mark
    row: int
    # Where the label goes: after the item, before it (it would run past the chart's right edge), or
    # inside a bar wide enough to hold it (neither side has room).
    label_at: Literal["after", "before", "inside"] = "after"

    @property
    def y(self) -> float:
        """Top of its row, within its lane."""
        return LANE_PADDING + self.row * ROW_HEIGHT

    @property
    def label_x(self) -> float:
        if self.label_at == "before":
            return self.x - (4 if self.width else 7)
        if self.label_at == "inside":
            return self.x + 4
        return self.x + (self.width + 4 if self.width else 7)


@dataclass(frozen=True)
class Lane:
    key: str  # "saga", "outbox", "reactor:<name>"
    label: str
    items: tuple[Placed, ...]
    rows: int
    y: float = 0.0

    @property
    def height(self) -> float:
        return self.rows * ROW_HEIGHT + 2 * LANE_PADDING


@dataclass(frozen=True)
class Journey:
    lanes: tuple[Lane, ...]
    ticks: tuple[tuple[float, str], ...]  # (x, "+1.2 s")
    start: datetime | None
    end: datetime | None = None
    width: int = WIDTH
    height: float = 0.0
    label_width: int = LABEL_WIDTH

    @property
    def in_flight(self) -> bool:
        """Something is still under way: a step running, an event unpublished, a delivery being handled."""
        return any(item.span.tone == "open" for lane in self.lanes for item in lane.items)


def build_journey(entries: Sequence[Entry], reactors: Iterable[str], *, now: datetime) -> Journey:
    """The chart of `entries`, with a lane for every reactor in `reactors` (empty when it saw nothing)."""
    end_of_chart = max([now, *(e.at for e in entries)]) if _saga_running(entries) else None
    lanes: list[tuple[str, str, list[Span]]] = [
        ("saga", "saga", _saga_spans([e for e in entries if e.source == "workflow"], end_of_chart)),
        ("outbox", "outbox", _outbox_spans([e for e in entries if e.source == "outbox"], end_of_chart)),
    ]
    by_reactor: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.source == "reactor":
            by_reactor[entry.actor].append(entry)
    names = list(dict.fromkeys([*reactors, *by_reactor]))
    lanes += [(f"reactor:{name}", name, _delivery_spans(by_reactor[name], end_of_chart)) for name in names]
    return _layout(lanes)


def _saga_running(entries: Sequence[Entry]) -> bool:
    """No end of the workflow recorded: what is open reaches up to now."""
    return not any(e.kind in _WORKFLOW_ENDS for e in entries)


def format_ms(ms: float | None) -> str:
    """A duration for people: "340 ms", "12.5 s", "14 min" ("" for None)."""
    if ms is None:
        return ""
    if ms < 10_000:
        return f"{ms:,.0f} ms"
    return f"{ms / 1000:,.1f} s" if ms < 600_000 else f"{ms / 60_000:,.0f} min"


def _title(entry: Entry, *extra: str) -> str:
    parts = [entry.summary, *extra]
    if entry.detail:
        parts.append(entry.detail)
    return " · ".join(part for part in parts if part)


def _saga_spans(entries: Sequence[Entry], open_end: datetime | None) -> list[Span]:
    spans: list[Span] = []
    scheduled: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        kind = entry.kind
        if kind.startswith(_STEP_PREFIXES) and entry.step:
            family, _, outcome = kind.rpartition(".")
            step = entry.step
            if outcome == "scheduled":
                scheduled[step].append(entry)
            elif family == "local_step":
                began = entry.at - timedelta(milliseconds=entry.duration_ms or 0)
                spans.append(_step_span(entry, began, entry.at, "ok" if outcome == "completed" else "fail"))
            elif outcome in _STEP_ENDS:
                began = scheduled[step].pop(0).at if scheduled[step] else entry.at
                tone = _STEP_ENDS[outcome]
                spans.append(
                    _step_span(
                        entry, began, entry.at, "comp" if family == "compensation" and tone == "ok" else tone
                    )
                )
            elif outcome in ("retrying", "running") and scheduled[step]:
                began = scheduled[step].pop(0).at
                spans.append(
                    _step_span(
                        entry, began, open_end or entry.at, "fail" if outcome == "retrying" else "open"
                    )
                )
        else:
            spans.append(_saga_mark(entry))
    return spans


def _step_span(entry: Entry, start: datetime, end: datetime, tone: Tone) -> Span:
    took = format_ms(entry.duration_ms)
    if entry.attempt and entry.attempt > 1:
        # The bar spans every attempt and the waits between them; the duration is the last attempt's.
        label = f"{entry.step} ({entry.attempt} attempts" + (f", last {took})" if took else ")")
    else:
        label = f"{entry.step}" + (f" {took}" if took else "")
    return Span(start, end, label, tone, _title(entry, took), entry.kind)


def _saga_mark(entry: Entry) -> Span:
    kind = entry.kind
    label = entry.summary.removeprefix("status ") if kind == "status" else entry.summary
    tone: Tone = "info"
    if kind.startswith("cancel."):
        tone = "warn"
    elif kind.endswith(("failed", "terminated", "timed_out", "refused")):
        tone = "fail"
    took = format_ms(entry.duration_ms) if kind.startswith("workflow.") else ""
    return Span(entry.at, None, label, tone, _title(entry, took), kind)


def _outbox_spans(entries: Sequence[Entry], open_end: datetime | None) -> list[Span]:
    recorded: dict[str, Entry] = {}
    spans: list[Span] = []
    for entry in entries:
        key = entry.event_id or entry.summary
        if entry.kind == "event.recorded":
            recorded[key] = entry
        elif entry.kind == "event.published":
            began = recorded.pop(key).at if key in recorded else entry.at
            label = f"{_event_type(entry.summary)} published"
            spans.append(Span(began, entry.at, label, "ok", _title(entry), entry.kind))
        elif entry.kind == "event.publish_failed":
            spans.append(Span(entry.at, None, "publish failed", "fail", _title(entry), entry.kind))
    for entry in recorded.values():  # recorded, not published yet
        label = f"{_event_type(entry.summary)} pending"
        spans.append(Span(entry.at, open_end, label, "open", _title(entry), entry.kind))
    return spans


def _event_type(summary: str) -> str:
    """The event type leading a summary ("order.shipped.v1 published", "loyalty: order.shipped.v1 ...")."""
    return summary.split(": ", 1)[-1].split(" ", 1)[0]


def _delivery_spans(entries: Sequence[Entry], open_end: datetime | None) -> list[Span]:
    received: dict[str, Entry] = {}
    spans: list[Span] = []
    for entry in entries:
        outcome = entry.kind.removeprefix("delivery.")
        event = _event_type(entry.summary)
        # One delivery at a time per message: received, then its outcome (a retry is received again).
        key = entry.event_id or entry.summary
        if outcome == "received":
            received[key] = entry
        elif outcome == "processed":
            began = received.pop(key).at if key in received else entry.at
            took = format_ms(entry.duration_ms)
            spans.append(
                Span(began, entry.at, f"{event} processed {took}", "ok", _title(entry, took), entry.kind)
            )
        else:
            received.pop(key, None)
            tone = _DELIVERY_MARKS.get(outcome, "info")
            label = outcome.replace("_", " ")
            spans.append(Span(entry.at, None, label, tone, _title(entry), entry.kind))
    for entry in received.values():  # being handled right now
        spans.append(Span(entry.at, open_end, "received", "open", _title(entry), entry.kind))
    return spans


def _layout(lanes: Sequence[tuple[str, str, list[Span]]]) -> Journey:
    moments = [t for _, _, spans in lanes for s in spans for t in (s.start, s.end) if t is not None]
    if not moments:
        return Journey(lanes=tuple(Lane(k, label, (), 1) for k, label, _ in lanes), ticks=(), start=None)
    start, end = min(moments), max(moments)
    total_ms = max((end - start).total_seconds() * 1000, 1.0)
    plot = WIDTH - LABEL_WIDTH - RIGHT_MARGIN

    def x_of(moment: datetime) -> float:
        return LABEL_WIDTH + (moment - start).total_seconds() * 1000 / total_ms * plot

    placed_lanes: list[Lane] = []
    y: float = AXIS_HEIGHT
    for key, label, spans in lanes:
        placed = _pack(spans, x_of)
        rows = max((p.row for p in placed), default=0) + 1
        lane = Lane(key, label, tuple(placed), rows, y)
        placed_lanes.append(lane)
        y += lane.height
    return Journey(tuple(placed_lanes), _ticks(total_ms, plot), start, end, height=y + 4)


def _pack(spans: Iterable[Span], x_of: Callable[[datetime], float]) -> list[Placed]:
    """Each span on the first row where neither it nor its label overlaps what is already there."""
    row_ends: list[float] = []
    placed: list[Placed] = []
    for span in sorted(spans, key=lambda s: (s.start, s.end or s.start)):
        x = x_of(span.start)
        width = max(x_of(span.end) - x, MIN_BAR) if span.end is not None else 0.0
        gap = 4 if width else 7
        text = text_width(span.label)
        label_at: Literal["after", "before", "inside"] = "after"
        if x + width + gap + text > WIDTH:
            if x - gap - text > LABEL_WIDTH:
                label_at = "before"
            elif width >= text + 8:
                label_at = "inside"
        left = x - gap - text if label_at == "before" else x
        reach = x + width if label_at != "after" else x + width + gap + text
        # A mark's dot reaches 4.5 units left of its x: keep clear of the label before it.
        row = next((i for i, row_end in enumerate(row_ends) if row_end < left - 6), len(row_ends))
        if row == len(row_ends):
            row_ends.append(reach)
        else:
            row_ends[row] = reach
        placed.append(Placed(span, x, width, row, label_at))
    return placed


def text_width(label: str) -> float:
    """About how wide `label` is drawn: capitals and digits are wider than lower case, spaces narrower."""
    return sum(
        WIDE_CHAR if c.isupper() or c.isdigit() or c in "_mw" else NARROW_CHAR if c in " .,:;()il" else CHAR
        for c in label
    )


def _ticks(total_ms: float, plot: float) -> tuple[tuple[float, str], ...]:
    steps = [1, 2, 5]
    step = next(
        base * 10**power for power in range(0, 8) for base in steps if total_ms / (base * 10**power) <= 8
    )
    ticks = []
    at = 0.0
    while at <= total_ms + 1e-9:
        label = f"+{at:,.0f} ms" if step < 1000 else f"+{at / 1000:,.{0 if step % 1000 == 0 else 1}f} s"
        ticks.append((LABEL_WIDTH + at / total_ms * plot, label))
        at += step
    return tuple(ticks)
