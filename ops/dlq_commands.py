"""`order-saga dlq`: a reactor's dead letters, listed and redriven to that reactor only (`reactors.dlq`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from infra.db import open_database
from infra.settings import load_settings
from reactors.dlq import DEFAULT_LIMIT, list_dead_letters, redrive
from reactors.registry import reactor_named

app = typer.Typer(
    help="Dead letters of a reactor: list them, redrive them to that reactor only.", no_args_is_help=True
)


@app.command("list")
def list_command(
    reactor: Annotated[str, typer.Argument(help="reactor name, e.g. notification")],
    limit: Annotated[int, typer.Option(help="show at most this many")] = DEFAULT_LIMIT,
) -> None:
    """List a reactor's dead letters: id, type, order, attempts, reason."""
    letters = asyncio.run(list_dead_letters(load_settings(), _known(reactor), limit=limit))
    if not letters:
        typer.echo(f"no dead letters for {reactor}")
        return
    typer.echo(f"{'ID':36}  {'TYPE':22}  {'ORDER':36}  {'ATTEMPTS':>8}  REASON")
    for letter in letters:
        typer.echo(
            f"{letter.message_id:36}  {letter.event_type:22}  {letter.order_id:36}  {letter.attempts:>8}  "
            f"{letter.reason}"
        )


@app.command("redrive")
def redrive_command(
    reactor: Annotated[str, typer.Argument(help="reactor name, e.g. notification")],
    message_ids: Annotated[
        list[str] | None, typer.Argument(help="ids of the dead letters to redrive")
    ] = None,
    redrive_all: Annotated[bool, typer.Option("--all", help="redrive every dead letter")] = False,
) -> None:
    """Send dead letters back to the reactor's queue (deduplicated by its inbox as usual)."""
    if bool(message_ids) == redrive_all:
        raise typer.BadParameter("give message ids or --all (not both)")
    settings = load_settings()

    async def _run() -> list[str]:
        database = open_database(settings)
        try:
            return await redrive(
                settings, database.sessions, _known(reactor), None if redrive_all else message_ids
            )
        finally:
            await database.dispose()

    done = asyncio.run(_run())
    typer.echo(f"redrove {len(done)} message(s) to {reactor}")
    for message_id in done:
        typer.echo(f"  {message_id}")


def _known(reactor: str) -> str:
    try:
        return reactor_named(reactor).name
    except LookupError as err:
        raise typer.BadParameter(str(err)) from err
