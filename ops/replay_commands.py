"""`order-saga replay`: outbox events sent again to ONE reactor (`reactors.replay`, the implementation the
HTTP API and the console use too): a dry run with counts, the run with its progress, status and resume."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.db import open_database
from infra.settings import Settings, load_settings
from ops import terminal
from ops.dlq_commands import known, parse_time
from reactors import replay
from reactors.models import ReplayMode
from reactors.registry import reactor_named
from reactors.replay import ReplayError, ReplayPlan, ReplaySelection, ReplayStatus

console = terminal.console(140)
app = typer.Typer(
    help="Replay published events from the outbox to one reactor: backfill, or re-apply after a reset.",
    no_args_is_help=True,
)
T = TypeVar("T")

Reactor = Annotated[str, typer.Argument(help="the one reactor to replay to, e.g. loyalty")]
Mode = Annotated[
    str,
    typer.Option(
        help="backfill (through the inbox: applied events are skipped) or reapply (reset, then apply again)"
    ),
]
Orders = Annotated[list[str] | None, typer.Option("--order", help="an order id (repeatable)")]
EventType = Annotated[str | None, typer.Option("--type", help="only this event type")]
Since = Annotated[str | None, typer.Option(help="recorded at or after (ISO 8601, UTC if no zone)")]
Until = Annotated[str | None, typer.Option(help="recorded before (ISO 8601, UTC if no zone)")]


def _with_database(settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    async def run() -> T:
        database = open_database(settings)
        try:
            return await work(database.sessions)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except ReplayError as err:
        console.print(f"refused: {err}", style="red")
        raise typer.Exit(1) from err


def _selection(
    orders: list[str] | None, event_type: str | None, since: str | None, until: str | None
) -> ReplaySelection:
    return ReplaySelection(tuple(orders or ()), event_type, parse_time(since), parse_time(until))


def _print_plan(plan: ReplayPlan) -> None:
    console.print(
        f"{plan.mode} to {plan.reactor}: {plan.total} event(s) of {plan.orders} order(s) "
        f"({plan.selection.describe()})"
    )
    for event_type, count in sorted(plan.by_type.items()):
        console.print(f"  {event_type}: {count}")
    console.print(
        f"  would apply {plan.would_apply}, skip {plan.would_skip} (applied before), "
        f"reset first {plan.would_reset}"
    )


@app.command("plan")
def plan_command(
    reactor: Reactor,
    mode: Mode = ReplayMode.BACKFILL,
    orders: Orders = None,
    event_type: EventType = None,
    since: Since = None,
    until: Until = None,
) -> None:
    """The dry run: what a replay would take and do, with counts; changes nothing."""
    target = reactor_named(known(reactor))
    selection = _selection(orders, event_type, since, until)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> ReplayPlan:
        async with sessions() as session:
            return await replay.plan(session, target, mode, selection)

    _print_plan(_with_database(load_settings(), work))


@app.command("run")
def run_command(
    reactor: Reactor,
    mode: Mode = ReplayMode.BACKFILL,
    orders: Orders = None,
    event_type: EventType = None,
    since: Since = None,
    until: Until = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    wait: Annotated[bool, typer.Option(help="wait until the reactor has settled every event")] = True,
) -> None:
    """Replay: shows the dry run and asks (unless --yes), then publishes with progress and waits for the
    reactor to settle each event."""
    target = reactor_named(known(reactor))
    selection = _selection(orders, event_type, since, until)
    settings = load_settings()
    if not yes:

        async def dry(sessions: async_sessionmaker[AsyncSession]) -> ReplayPlan:
            async with sessions() as session:
                return await replay.plan(session, target, mode, selection)

        _print_plan(_with_database(settings, dry))
        typer.confirm("replay them?", abort=True)

    def progress(done: int, total: int) -> None:
        console.print(f"published {done}/{total}")

    async def work(sessions: async_sessionmaker[AsyncSession]) -> ReplayStatus:
        return await replay.start(settings, sessions, target, mode, selection, actor="cli", progress=progress)

    _follow(settings, _with_database(settings, work), wait)


@app.command("resume")
def resume_command(replay_id: str, wait: Annotated[bool, typer.Option()] = True) -> None:
    """Publish what a replay whose publishing stopped has not published yet."""
    settings = load_settings()

    async def work(sessions: async_sessionmaker[AsyncSession]) -> ReplayStatus:
        return await replay.publish(
            settings, sessions, replay_id, progress=lambda d, t: console.print(f"published {d}/{t}")
        )

    _follow(settings, _with_database(settings, work), wait)


@app.command("status")
def status_command(replay_id: str) -> None:
    """A replay: what it took, published, and what the reactor applied or skipped."""
    settings = load_settings()

    async def work(sessions: async_sessionmaker[AsyncSession]) -> ReplayStatus:
        return await replay.status(sessions, replay_id)

    _print_status(_with_database(settings, work))


@app.command("list")
def list_command(
    reactor: Annotated[str | None, typer.Option(help="only this reactor's")] = None,
    limit: int = 20,
) -> None:
    """The latest replays, newest first."""
    settings = load_settings()

    async def work(sessions: async_sessionmaker[AsyncSession]) -> list[ReplayStatus]:
        return await replay.recent(sessions, reactor=known(reactor) if reactor else None, limit=limit)

    table = Table("id", "reactor", "mode", "by", "at", "events", "applied", "skipped", "state", "selection")
    for found in _with_database(settings, work):
        table.add_row(
            found.id,
            found.reactor,
            found.mode,
            found.requested_by,
            found.created_at.isoformat(timespec="seconds"),
            str(found.total),
            str(found.applied),
            str(found.skipped),
            "done" if found.done else found.state,
            found.selection,
        )
    console.print(table)


def _follow(settings: Settings, started: ReplayStatus, wait: bool) -> None:
    """Print the replay's status, then (with `wait`) poll until the reactor has settled it and print its
    final status (once: not when it was settled already)."""
    _print_status(started)
    if started.state == "failed":
        raise typer.Exit(1)
    current = started
    while wait and not current.done:
        time.sleep(1)

        async def work(sessions: async_sessionmaker[AsyncSession]) -> ReplayStatus:
            return await replay.status(sessions, started.id)

        current = _with_database(settings, work)
        console.print(f"settled {current.applied + current.skipped + current.missing}/{current.total}")
    if current is not started:
        _print_status(current)


def _print_status(status: ReplayStatus) -> None:
    console.print(
        f"replay {status.id}: {status.mode} to {status.reactor} by {status.requested_by} "
        f"({status.selection}); {status.state}{', done' if status.done else ''}"
    )
    console.print(
        f"  {status.total} event(s): published {status.published}, applied {status.applied}, "
        f"skipped {status.skipped} (applied before), missing {status.missing}, pending {status.pending}"
    )
    if status.last_error:
        console.print(f"  stopped: {status.last_error} (order-saga replay resume {status.id})", style="red")
