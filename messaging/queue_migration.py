"""Changing the arguments of a reactor's queues (say `REACTOR_DELIVERY_LIMIT`) without losing a message.

RabbitMQ fixes a queue's arguments at declaration (redeclaring with others fails with 406), so the queues
must be deleted and declared again, and deleting a queue destroys its messages. `migrate_queues` moves
them out first, and keeps taking the reactor's events while its queue is away:

1. declare `<ns>.<reactor>.migrating` (classic, durable) and bind it like the reactor's queue: from now
   on every new event for the reactor reaches it;
2. unbind the reactor's queue: new events now reach the holding queue only;
3. for each wait queue, then the reactor's queue (in that order: wait queues dead-letter into the
   reactor's queue): move its messages to the holding queue (get, confirmed publish, ack), delete it;
4. declare the reactor's queues with the arguments of `topology` (the new settings) and their bindings;
5. unbind the holding queue, move its messages to the reactor's queue, delete it.

Between steps 4 and 5 an event can reach both queues: the reactor's inbox absorbs the copy. Every move
publishes before it acks, so a crash leaves a copy in both places, never none; run it again to finish (each
step is idempotent, missing queues are skipped). The DLQ (a classic queue without these arguments) is left
as it is. Requirements: the reactor is stopped (no consumer on its queue: `MigrationRefused` otherwise,
since messages it holds unacked would be destroyed with the queue), and the relay runs with the new
settings or is stopped (an old relay declaring the queue with the old arguments would race step 4).
Raises `MigrationRefused`, or `messaging.broker.BROKER_UNAVAILABLE` errors.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractConnection

from infra.settings import Settings
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.topology import Subscription, Topology, declare_subscription, missing_queues

log = logging.getLogger(__name__)


class MigrationRefused(Exception):
    """The migration would lose messages in the current state (a consumer is attached)."""


@dataclass
class MigrationReport:
    """What was moved: message counts by source queue (the holding queue's count is the way back)."""

    reactor: str
    holding_queue: str
    moved: dict[str, int] = field(default_factory=dict)


def holding_queue(topology: Topology, reactor: str) -> str:
    return f"{topology.namespace}.{reactor}.migrating"


async def migrate_queues(
    settings: Settings, topology: Topology, subscription: Subscription
) -> MigrationReport:
    """Re-create the reactor's queues with the arguments `topology` gives them, moving their messages
    (see the module docstring). Returns the counts moved."""
    reactor = subscription.reactor
    report = MigrationReport(reactor, holding_queue(topology, reactor))
    timeout = settings.broker_call_timeout_seconds
    publisher = ConfirmedPublisher(settings, f"migrate-{reactor}-publish")
    connection = await connect(settings, f"migrate-{reactor}")
    try:
        mover = _Mover(connection, publisher, timeout)
        main = topology.queue(reactor)
        waits = [topology.wait_queue(reactor, delay) for delay in sorted(set(topology.retry_delays_ms))]
        missing = await missing_queues(mover.channel, [main, *waits], timeout)
        existing = [name for name in (main, *waits) if name not in missing]
        if main in existing:
            consumers = await mover.consumers(main)
            if consumers:
                raise MigrationRefused(
                    f"{consumers} consumer(s) on {main}: "
                    f"stop the {reactor} reactor before migrating its queues"
                )
        channel = await mover.channel()
        holding = await channel.declare_queue(
            report.holding_queue, durable=True, arguments={"x-queue-type": "classic"}, timeout=timeout
        )
        for routing_key in subscription.routing_keys:
            await holding.bind(topology.exchange, routing_key, timeout=timeout)
        log.info("%s: new events now also reach %s", reactor, report.holding_queue)
        if main in existing:
            old = await channel.get_queue(main, ensure=False)
            for routing_key in subscription.routing_keys:
                await old.unbind(topology.exchange, routing_key, timeout=timeout)
        for name in [*waits, main]:  # wait queues first: they dead-letter into the main queue
            if name in existing:
                report.moved[name] = await mover.drain_and_delete(name, report.holding_queue)
        await declare_subscription(await mover.channel(), topology, subscription, timeout)
        log.info("%s: queues declared with the new arguments", reactor)
        holding = await (await mover.channel()).get_queue(report.holding_queue, ensure=False)
        for routing_key in subscription.routing_keys:
            await holding.unbind(topology.exchange, routing_key, timeout=timeout)
        report.moved[report.holding_queue] = await mover.drain_and_delete(report.holding_queue, main)
        return report
    finally:
        await close_quietly(connection, timeout)
        await publisher.close()


class _Mover:
    """Gets messages from one queue and publishes them (confirmed) to another, over two connections."""

    def __init__(self, connection: AbstractConnection, publisher: ConfirmedPublisher, timeout: float) -> None:
        self._connection = connection
        self._publisher = publisher
        self._timeout = timeout
        self._channel: AbstractChannel | None = None

    async def channel(self) -> AbstractChannel:
        """The channel for gets and declarations, opened again after the broker closed it."""
        if self._channel is None or self._channel.is_closed:
            self._channel = await asyncio.wait_for(self._connection.channel(), self._timeout)
        return self._channel

    async def consumers(self, name: str) -> int:
        queue = await (await self.channel()).declare_queue(name, passive=True, timeout=self._timeout)
        return queue.declaration_result.consumer_count or 0

    async def drain_and_delete(self, source: str, target: str) -> int:
        """Move every message of `source` to `target`, then delete `source` (checked empty just before);
        how many were moved."""
        moved = 0
        while True:
            channel = await self.channel()
            queue = await channel.get_queue(source, ensure=False)
            while (message := await queue.get(no_ack=False, fail=False, timeout=self._timeout)) is not None:
                await self._publisher.publish(
                    exchange="",
                    routing_key=target,
                    body=message.body,
                    message_id=message.message_id or "",
                    message_type=message.type,
                    content_type=message.content_type or "application/json",
                    timestamp=message.timestamp,
                    headers=dict(message.headers),
                )
                await asyncio.wait_for(message.ack(), self._timeout)
                moved += 1
            left = await channel.declare_queue(source, passive=True, timeout=self._timeout)
            if not left.declaration_result.message_count:
                await asyncio.wait_for(channel.queue_delete(source), self._timeout)
                log.info("moved %d message(s) from %s to %s, deleted %s", moved, source, target, source)
                return moved
