"""Command line: an order's timeline, and the AsyncAPI event catalog.

    order-saga timeline ORDER_ID [--json]     (also: order-timeline ORDER_ID)
    order-saga asyncapi [--output FILE]

Settings (database, Temporal, broker namespace) come from the environment and `.env`, as for the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.settings import load_settings
from messaging.asyncapi import asyncapi_document
from ops import terminal
from reactors.registry import REACTORS
from timeline.entries import Timeline
from timeline.render import render_timeline
from timeline.sources import timeline_for


def timeline_command(
    order_id: Annotated[str, typer.Argument(help="the order's id (a UUID)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the entries as JSON")] = False,
) -> None:
    """What happened to one order: saga steps, compensations, outbox, every reactor's deliveries."""
    found = asyncio.run(timeline_for(load_settings(), order_id))
    if found is None:
        typer.echo(f"no order {order_id}", err=True)
        raise typer.Exit(code=1)
    if as_json:
        typer.echo(json.dumps(timeline_as_json(found), indent=2))
        return
    terminal.console(140).print(render_timeline(found))


def asyncapi_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to this file instead of standard output")
    ] = None,
) -> None:
    """The AsyncAPI 3.0 document of the order events (contracts, exchange, queues, reactors)."""
    text = json.dumps(asyncapi_document(load_settings(), REACTORS), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


def timeline_as_json(timeline: Timeline) -> dict[str, Any]:
    return {
        "order_id": timeline.order_id,
        "workflow_id": timeline.workflow_id,
        "warnings": list(timeline.warnings),
        "entries": [
            {**dataclasses.asdict(entry), "at": entry.at.isoformat(), "source": str(entry.source)}
            for entry in timeline.entries
        ],
    }
