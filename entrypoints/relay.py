"""`python -m entrypoints.relay`: publish the outbox to RabbitMQ until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from entrypoints.bootstrap import outbox_relay
from entrypoints.process import command_line, run_until_signalled
from infra.db import open_database
from infra.settings import load_settings
from messaging.topology import Topology

log = logging.getLogger("entrypoints.relay")


def main() -> None:
    command_line("python -m entrypoints.relay", __doc__).parse_args()
    settings = load_settings()

    async def serve(stop: asyncio.Event) -> None:
        database = open_database(settings)
        try:
            relay = outbox_relay(settings, database)
            log.info("outbox relay publishing to %s", Topology.from_settings(settings).exchange)
            await relay.run(stop)
        finally:
            await database.dispose()

    run_until_signalled(settings, "relay", serve, metrics_port=settings.relay_metrics_port)


if __name__ == "__main__":
    main()
