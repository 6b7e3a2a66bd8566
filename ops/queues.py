"""Operator command for the reactors' queues: re-create them with new arguments, losing no message.

    order-saga queues migrate loyalty [analytics ...]

Run it with the NEW settings (for example `REACTOR_DELIVERY_LIMIT=30`) while the named reactors are
stopped; see `messaging.queue_migration` for the steps and README ("Changing a queue's arguments").
Exit status 1 when the migration is refused (a reactor still consumes) or the broker fails.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from infra.settings import load_settings
from messaging.broker import BROKER_UNAVAILABLE
from messaging.queue_migration import MigrationRefused, migrate_queues
from messaging.topology import Topology
from reactors.registry import reactor_named

REFUSALS: tuple[type[BaseException], ...] = (MigrationRefused, *BROKER_UNAVAILABLE)

app = typer.Typer(help="Reactor queues: re-create them with new arguments.", no_args_is_help=True)


@app.callback()
def queues() -> None:
    """Reactor queues: re-create them with new arguments."""


@app.command()
def migrate(
    reactors: Annotated[list[str], typer.Argument(help="reactor names, e.g. loyalty")],
) -> None:
    """Move each reactor's messages aside, re-create its queues with the current settings, move them back."""
    settings = load_settings()
    topology = Topology.from_settings(settings)
    try:
        subscriptions = [reactor_named(name).subscription for name in reactors]
    except LookupError as err:
        raise typer.BadParameter(str(err)) from err
    for subscription in subscriptions:
        try:
            report = asyncio.run(migrate_queues(settings, topology, subscription))
        except REFUSALS as err:
            typer.echo(f"{subscription.reactor}: not migrated: {err}", err=True)
            raise typer.Exit(1) from err
        moved = ", ".join(f"{queue}: {count}" for queue, count in report.moved.items())
        typer.echo(
            f"{subscription.reactor}: queues re-created "
            f"(delivery limit {topology.delivery_limit}); moved {moved}"
        )
