"""The shape every long-running component shares: configure logs, traces and metrics, run until
SIGINT/SIGTERM asks it to stop, then shut down gracefully."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence

from infra.settings import Settings
from observability import tracing
from observability.counters import start_work_counters
from observability.logs import configure_logging
from observability.metrics import serve_metrics


def command_line(prog: str, doc: str | None, argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of a process's command line: `--help` prints `doc` and exits, as every command should;
    the caller adds its arguments, if any, then parses `argv` (default: sys.argv[1:])."""
    return argparse.ArgumentParser(
        prog=prog,
        description=doc,
        epilog="Configured by the environment and .env (see .env.example).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_until_signalled(
    settings: Settings,
    component: str,
    serve: Callable[[asyncio.Event], Awaitable[None]],
    *,
    metrics_port: int,
) -> None:
    """Run `serve(stop)`; `stop` is set by SIGINT or SIGTERM, and `serve` then winds down and returns."""
    configure_logging(settings)
    tracing.configure_tracing(settings, component)
    serve_metrics(settings, metrics_port)
    start_work_counters(settings, component)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        asyncio.run(_main())
    finally:
        tracing.shutdown()
