"""The real outbox relay, armed to SIGKILL itself right after its first confirmed publish.

    python -m tests.faults.relay_fault MARKER_FILE

Same settings, topology and `OutboxRelay` as `python -m entrypoints.relay`; the only difference is the relay's
own test seam, `after_confirm`, which runs after the broker confirmed a message and before its outbox row is
marked published. There it writes the event id to MARKER_FILE and kills its own process, so the row stays
pending and is published again by the next relay (at least once; the reactors' inboxes absorb the copy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from infra.db import open_database
from infra.settings import load_settings
from messaging.relay import OutboxRelay
from messaging.topology import Topology
from reactors.registry import REACTORS


def main() -> None:
    marker = Path(sys.argv[1])
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    def die_after_confirm(event_id: str) -> None:
        marker.write_text(event_id)
        os.kill(os.getpid(), signal.SIGKILL)

    async def after_confirm(event_id: str) -> None:
        die_after_confirm(event_id)

    async def serve() -> None:
        database = open_database(settings)
        relay = OutboxRelay(
            settings,
            database.sessions,
            Topology.from_settings(settings),
            [reactor.subscription for reactor in REACTORS],
            name="outbox-relay-armed",
            after_confirm=after_confirm,
        )
        await relay.run(asyncio.Event())

    asyncio.run(serve())


if __name__ == "__main__":
    main()
