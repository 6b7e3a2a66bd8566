"""`order-saga dlq`: a reactor's dead letters, listed, grouped, inspected and redriven to that reactor only
(`reactors.dlq`, the implementation the HTTP API and the console use too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.db import open_database
from infra.settings import load_settings
from ops import terminal
from reactors import dlq
from reactors.dlq import DEFAULT_LIMIT, Confirmed, DeadLetterQueueBusy, Selection
from reactors.registry import reactor_named

console = terminal.console(140)
T = TypeVar("T")
# Exit status when another operator holds the reactor's DLQ (sysexits' EX_TEMPFAIL: try again later).
BUSY_EXIT = 75
app = typer.Typer(
    help="Dead letters of a reactor: list, group by failure, inspect, redrive to that reactor only.",
    no_args_is_help=True,
)

Reactor = Annotated[str, typer.Argument(help="reactor name, e.g. notification")]
EventType = Annotated[str | None, typer.Option("--type", help="only this event type")]
Reason = Annotated[str | None, typer.Option(help="only reasons containing this text (any case)")]
Group = Annotated[str | None, typer.Option(help="only this failure group (its id, see `dlq groups`)")]
OrderId = Annotated[str | None, typer.Option("--order", help="only this order's dead letters")]
Since = Annotated[str | None, typer.Option(help="dead-lettered at or after (ISO 8601, UTC if no zone)")]
Until = Annotated[str | None, typer.Option(help="dead-lettered before (ISO 8601, UTC if no zone)")]


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from the command line; UTC when it names no zone."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as err:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def known(reactor: str) -> str:
    try:
        return reactor_named(reactor).name
    except LookupError as err:
        raise typer.BadParameter(str(err)) from err


def _on_dlq(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    """Run `work` with the database's sessions (its lock serialises DLQ readers); exits `BUSY_EXIT` when
    another operator holds the DLQ."""

    async def run() -> T:
        database = open_database(load_settings())
        try:
            return await work(database.sessions)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except DeadLetterQueueBusy as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(BUSY_EXIT) from err


def _selection(
    ids: list[str] | None,
    event_type: str | None,
    reason: str | None,
    group: str | None,
    order_id: str | None,
    since: str | None,
    until: str | None,
) -> Selection:
    return Selection(
        message_ids=frozenset(ids) if ids else None,
        group=group,
        event_type=event_type,
        reason=reason,
        order_id=order_id,
        since=parse_time(since),
        until=parse_time(until),
    )


@app.command("list")
def list_command(
    reactor: Reactor,
    event_type: EventType = None,
    reason: Reason = None,
    group: Group = None,
    order_id: OrderId = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(help="show at most this many")] = DEFAULT_LIMIT,
) -> None:
    """A reactor's dead letters, oldest first: id, type, order, attempts, age, group, reason."""
    selection = _selection(None, event_type, reason, group, order_id, since, until)
    name = known(reactor)
    found = _on_dlq(lambda sessions: dlq.scan(load_settings(), sessions, name, selection))
    if not found.letters:
        typer.echo(f"no dead letters for {reactor}" + ("" if selection.everything else " match"))
        return
    now = datetime.now(UTC)
    table = Table("id", "type", "order", "attempts", "age", "group", "reason")
    for letter in found.letters[:limit]:
        age = letter.age_seconds(now)
        table.add_row(
            letter.message_id,
            letter.event_type,
            letter.order_id,
            str(letter.attempts),
            "?" if age is None else _age(age),
            letter.group,
            letter.reason,
        )
    console.print(table)
    console.print(
        f"{len(found.letters)} dead letter(s)" + (" (first 10,000 examined)" if found.truncated else "")
    )


@app.command("groups")
def groups_command(reactor: Reactor) -> None:
    """A reactor's dead letters grouped by failure (reasons that differ only in ids and numbers)."""
    name = known(reactor)
    found = _on_dlq(lambda sessions: dlq.scan(load_settings(), sessions, name))
    groups = dlq.group(found.letters)
    if not groups:
        typer.echo(f"no dead letters for {reactor}")
        return
    table = Table("group", "count", "types", "first", "last", "failure")
    for failure in groups:
        table.add_row(
            failure.id,
            str(failure.count),
            ", ".join(failure.event_types),
            failure.first_at.isoformat(timespec="seconds") if failure.first_at else "?",
            failure.last_at.isoformat(timespec="seconds") if failure.last_at else "?",
            failure.signature,
        )
    console.print(table)


@app.command("show")
def show_command(reactor: Reactor, message_id: str) -> None:
    """One dead letter: its properties, headers and payload."""
    name = known(reactor)
    detail = _on_dlq(lambda sessions: dlq.inspect(load_settings(), sessions, name, message_id))
    if detail is None:
        typer.echo(f"no dead letter {message_id} for {reactor}", err=True)
        raise typer.Exit(1)
    console.print_json(
        json.dumps(
            {"properties": detail.properties, "headers": detail.headers, "payload": detail.payload},
            default=str,
        )
    )


@app.command("redrive")
def redrive_command(
    reactor: Reactor,
    message_ids: Annotated[
        list[str] | None, typer.Argument(help="ids of the dead letters to redrive")
    ] = None,
    redrive_all: Annotated[bool, typer.Option("--all", help="every dead letter of the reactor")] = False,
    event_type: EventType = None,
    reason: Reason = None,
    group: Group = None,
    order_id: OrderId = None,
    since: Since = None,
    until: Until = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would be redriven")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Send the chosen dead letters back to the reactor's queue (deduplicated by its inbox as usual).

    Choose by ids, `--group`, the filters (combined), or `--all`. Without `--yes` it counts them first and
    asks."""
    selection = _selection(message_ids, event_type, reason, group, order_id, since, until)
    if selection.everything != redrive_all:
        raise typer.BadParameter("choose dead letters (ids, --group or filters) or --all, not both")
    name = known(reactor)
    settings = load_settings()

    def run(dry: bool, confirmed: Confirmed | None = None) -> dlq.Redrive:
        return _on_dlq(
            lambda sessions: dlq.redrive(
                settings, sessions, name, selection, confirmed=confirmed, actor="cli", dry_run=dry
            )
        )

    confirmed = None
    if dry_run or not yes:
        counted = run(True)
        typer.echo(f"{counted.matched} dead letter(s) of {name} match ({selection.describe()})")
        if dry_run or counted.matched == 0:
            return
        typer.confirm(f"redrive them to {name}?", abort=True)
        # Exactly those: any that arrive meanwhile stay in the DLQ.
        confirmed = Confirmed(message_ids=frozenset(counted.matched_ids))
    done = run(False, confirmed)
    typer.echo(f"redrove {len(done.redriven)} message(s) to {name}")
    for message_id in done.redriven:
        typer.echo(f"  {message_id}")
    if done.skipped:
        typer.echo(f"{len(done.skipped)} more match now (arrived after the count): left in the DLQ")
    if done.missing:
        typer.echo(f"{len(done.missing)} counted no longer in the DLQ (taken meanwhile)")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3_600:.1f}h" if seconds < 172_800 else f"{seconds / 86_400:.1f}d"
