"""The operator CLIs: `order-saga` (`python -m entrypoints.cli`) and `order-timeline ORDER_ID`."""

from __future__ import annotations

import typer

from ops.cli import app
from ops.inspect import timeline_command


def main() -> None:
    """`order-saga`: orders, dead letters, outbox, timeline, event catalog, demo."""
    app()


def timeline_main() -> None:
    """`order-timeline ORDER_ID`: the timeline command on its own."""
    typer.run(timeline_command)


if __name__ == "__main__":
    main()
