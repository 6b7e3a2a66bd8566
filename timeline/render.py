"""Drawing a timeline for people: a rich table, one row per entry, times relative to the first."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from timeline.entries import Source, Timeline, TimelineEntry

_SOURCE_STYLES = {Source.WORKFLOW: "cyan", Source.OUTBOX: "magenta", Source.REACTOR: "blue"}


def _style(kind: str) -> str:
    if kind.endswith(("failed", "timed_out", "dead_lettered", "refused", "task_failed", "retrying")):
        return "bold red"
    if kind.startswith(("compensation.", "cancel.")) or kind.endswith(
        ("retry_scheduled", "duplicate_ignored")
    ):
        return "yellow"
    if kind.endswith(("completed", "published", "processed")):
        return "green"
    return ""


def render_timeline(
    timeline: Timeline | Sequence[TimelineEntry], *, title: str | None = None
) -> RenderableType:
    """A rich renderable of a timeline (or of bare entries): print it with `rich.console.Console().print`."""
    entries = timeline.entries if isinstance(timeline, Timeline) else tuple(timeline)
    if title is None and isinstance(timeline, Timeline):
        title = f"Order {timeline.order_id} ({timeline.workflow_id})"
    # Texts, not strings, for data: rich would read `[...]` in a detail or an id as markup and drop it.
    table = Table(title=Text(title) if title else None, title_justify="left", expand=False, show_lines=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("+ms", justify="right", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("what")
    table.add_column("attempt", justify="right")
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold")
    start = entries[0].at if entries else None
    for entry in entries:
        offset = (entry.at - start).total_seconds() * 1000 if start is not None else 0.0
        table.add_row(
            entry.at.strftime("%H:%M:%S.%f")[:-3],
            f"{offset:,.0f}",
            Text(entry.actor, style=_SOURCE_STYLES[entry.source]),
            Text(entry.summary, style=_style(entry.kind)),
            str(entry.attempt) if entry.attempt else "",
            _duration(entry.duration_ms),
            Text(entry.detail or ""),
        )
    if not entries:
        table.caption = "nothing recorded for this order yet"
    warnings = timeline.warnings if isinstance(timeline, Timeline) else ()
    if not warnings:
        return table
    return Group(table, *(Text(f"note: {warning}", style="yellow") for warning in warnings))


def _duration(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:,.1f} s"
