"""Health at a glance: readiness, the outbox's backlog, and each reactor's queues, read in one go.

Built from what the service already computes: `/readyz`'s checks (`api.readiness`), the outbox status of
`order-saga outbox status` (`messaging.outbox_status`) and a passive declare of each reactor's queues
(`messaging.topology.queue_states`, as the process launcher does). A source that cannot be read (the
broker down, say) leaves its part empty with the reason: the page says so instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from api.readiness import check_readiness
from api.resources import Resources
from api.schemas import Readiness
from messaging.outbox_status import OutboxStatus, outbox_status
from messaging.topology import QueueState, Topology, queue_states

T = TypeVar("T")


@dataclass(frozen=True)
class ReactorHealth:
    """One reactor's queues. `queue_depth`: ready in its queue; `retrying`: waiting out a retry delay;
    `lag`: everything it has yet to handle (the two together); `consumers`: on its queue."""

    name: str
    queue_depth: int
    retrying: int
    consumers: int
    dlq_depth: int

    @property
    def lag(self) -> int:
        return self.queue_depth + self.retrying


@dataclass(frozen=True)
class HealthSnapshot:
    taken_at: datetime
    readiness: Readiness
    outbox: OutboxStatus | None
    outbox_error: str | None
    reactors: tuple[ReactorHealth, ...]
    broker_error: str | None

    @property
    def outbox_pending(self) -> int:
        return self.outbox.counts.get("pending", 0) if self.outbox else 0


async def _bounded(call: Awaitable[T], seconds: float) -> tuple[T | None, str | None]:
    """The call's result, or None and why not (a timeout or an error), never an exception."""
    try:
        async with asyncio.timeout(seconds):
            return await call, None
    except TimeoutError:
        return None, f"no answer within {seconds:g} s"
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


async def _outbox(resources: Resources) -> OutboxStatus:
    async with resources.database.sessions() as session:
        return await outbox_status(session)


def reactor_health(topology: Topology, reactor: str, states: dict[str, QueueState]) -> ReactorHealth:
    main = states[topology.queue(reactor)]
    waits = [topology.wait_queue(reactor, delay) for delay in sorted(set(topology.retry_delays_ms))]
    return ReactorHealth(
        name=reactor,
        queue_depth=main.ready,
        retrying=sum(states[queue].ready for queue in waits),
        consumers=main.consumers,
        dlq_depth=states[topology.dead_letter_queue(reactor)].ready,
    )


async def health_snapshot(resources: Resources, reactors: Sequence[str]) -> HealthSnapshot:
    """Everything at once, each source bounded by the readiness timeout (a few seconds at most)."""
    settings = resources.settings
    topology = Topology.from_settings(settings)
    queues = [queue for reactor in reactors for queue in topology.queues_of(reactor)]
    limit = settings.api_readiness_timeout_seconds
    readiness, (outbox, outbox_error), (states, broker_error) = await asyncio.gather(
        check_readiness(resources),
        _bounded(_outbox(resources), limit),
        # Several round trips (one per queue): a larger bound than one check's.
        _bounded(queue_states(settings, queues, "console-health"), limit * 3),
    )
    return HealthSnapshot(
        taken_at=datetime.now(UTC),
        readiness=readiness,
        outbox=outbox,
        outbox_error=outbox_error,
        reactors=tuple(reactor_health(topology, r, states) for r in reactors) if states else (),
        broker_error=broker_error,
    )
