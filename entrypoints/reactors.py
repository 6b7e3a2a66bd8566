"""Run the reactors: `python -m entrypoints.reactors` (all registered) or
`python -m entrypoints.reactors loyalty analytics`.

Each reactor gets its own runtime, with its own broker connections. SIGINT/SIGTERM shut them down gracefully.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from entrypoints.bootstrap import reactor_runtimes
from entrypoints.process import command_line, run_until_signalled
from infra.db import open_database
from infra.settings import Settings, load_settings
from messaging.asyncapi import check_acyclic
from observability import tracing
from reactors.base import Reactor
from reactors.registry import REACTORS, reactor_named

log = logging.getLogger("entrypoints.reactors")


async def run_reactors(settings: Settings, reactors: Sequence[Reactor], stop: asyncio.Event) -> None:
    # A reactor that would feed its own input, directly or through others, never starts.
    check_acyclic({reactor.name: reactor for reactor in (*REACTORS, *reactors)}.values())
    database = open_database(settings)
    # The reactors' SQL runs inside their consumer spans: one span per statement.
    tracing.instrument_engine(database.engine)
    runtimes = reactor_runtimes(settings, database, reactors)
    try:
        log.info("starting reactors: %s", ", ".join(r.name for r in reactors))
        await asyncio.gather(*(runtime.run(stop) for runtime in runtimes))
    finally:
        await database.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line("python -m entrypoints.reactors", __doc__)
    known = [reactor.name for reactor in REACTORS]
    parser.add_argument(
        "names", nargs="*", metavar="REACTOR", help=f"reactors to run (default: all of {', '.join(known)})"
    )
    names = parser.parse_args(argv).names
    # Checked here, not with `choices`: argparse tests an empty `nargs="*"` default against them and fails.
    if unknown := sorted(set(names) - set(known)):
        parser.error(f"no reactor named {', '.join(unknown)} (registered: {', '.join(known)})")
    reactors = [reactor_named(name) for name in names] if names else list(REACTORS)
    settings = load_settings()
    run_until_signalled(
        settings,
        "reactors",
        lambda stop: run_reactors(settings, reactors, stop),
        metrics_port=settings.reactors_metrics_port,
    )


if __name__ == "__main__":
    main()
