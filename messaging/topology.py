"""Exchange and queue layout, declared idempotently by code at start-up.

    <ns>.events                   topic exchange (durable): every event, routing key = CloudEvents type
    <ns>.<reactor>                quorum queue bound to the reactor's routing keys; x-delivery-limit set
                                  explicitly (no default on 3.10); past it the broker dead-letters to the DLQ
    <ns>.<reactor>.wait.<ms>ms    quorum queue per retry delay: a message waits out the TTL, then is
                                  dead-lettered back to <ns>.<reactor> (that reactor only)
    <ns>.<reactor>.dlq            durable classic queue: dead letters, listed and redriven by reactors.dlq

Only features RabbitMQ 3.10 and 4.x share: quorum queues, per-queue message TTL, broker dead-lettering,
the default exchange for direct hand-offs. No delayed-message plugin. Queue arguments are fixed at
declaration: changing one (say the delivery limit) makes the redeclaration fail with 406
PRECONDITION_FAILED until the queue is deleted or migrated.

Dead-lettering is at-most-once, deliberately. Quorum queues offer at-least-once dead-lettering, but on the
RabbitMQ 3.10 here its per-queue workers crashed when queues were deleted right after a broker restart, and
that took down their supervisor (`rabbit_fifo_dlx_sup`): every later declaration of such a queue failed until
the node was restarted (seen in this project's tests; upstream rabbitmq-server issue 16652 describes the same
supervisor failure in 4.2). The broker dead-letters in two places only: a wait queue handing an expired
message back to its reactor's queue, and a reactor's queue giving up on a message after x-delivery-limit
deliveries. Both targets are durable queues declared with the source, on the same node, so the hop only
fails if the target is missing or has no leader at that instant. The second happens after every broker
restart (each quorum queue elects its leader on its own, and a wait queue dead-letters what expired while the
broker was down at once): the reactor runtime re-drives such lost retries from the outbox
(`reactors/runtime/recovery.py`). The runtime's own moves (to a wait queue,
to the DLQ) and redrives are publishes with publisher confirms, not broker dead-lettering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

from infra.settings import Settings
from messaging.broker import close_quietly, connect


@dataclass(frozen=True)
class Subscription:
    """What a reactor wants from the exchange: its name and the routing keys (topic patterns) it binds."""

    reactor: str
    routing_keys: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    namespace: str
    retry_delays_ms: tuple[int, ...]
    delivery_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            namespace=settings.broker_namespace,
            retry_delays_ms=tuple(settings.reactor_retry_delays_ms),
            delivery_limit=settings.reactor_delivery_limit,
        )

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    def queue(self, reactor: str) -> str:
        return f"{self.namespace}.{reactor}"

    def wait_queue(self, reactor: str, delay_ms: int) -> str:
        return f"{self.namespace}.{reactor}.wait.{delay_ms}ms"

    def dead_letter_queue(self, reactor: str) -> str:
        return f"{self.namespace}.{reactor}.dlq"

    def retry_queue_for(self, reactor: str, failed_attempt: int) -> str:
        """Where a message waits after its `failed_attempt`-th failure (1-based); the last delay repeats."""
        index = min(max(failed_attempt, 1), len(self.retry_delays_ms)) - 1
        return self.wait_queue(reactor, self.retry_delays_ms[index])

    def queues_of(self, reactor: str) -> list[str]:
        waits = [self.wait_queue(reactor, delay) for delay in sorted(set(self.retry_delays_ms))]
        return [self.queue(reactor), *waits, self.dead_letter_queue(reactor)]


def _quorum_arguments(topology: Topology, *, dead_letter_to: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": topology.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_to,
        "x-dead-letter-strategy": "at-most-once",  # see the module docstring
    }


async def declare_exchange(channel: AbstractChannel, topology: Topology, call_timeout: float) -> None:
    await channel.declare_exchange(topology.exchange, ExchangeType.TOPIC, durable=True, timeout=call_timeout)


async def declare_subscription(
    channel: AbstractChannel, topology: Topology, subscription: Subscription, call_timeout: float
) -> None:
    """Declare one reactor's queues and bindings (and the exchange). Safe to repeat."""
    await declare_exchange(channel, topology, call_timeout)
    reactor = subscription.reactor
    dead_letters = topology.dead_letter_queue(reactor)
    await channel.declare_queue(
        dead_letters, durable=True, arguments={"x-queue-type": "classic"}, timeout=call_timeout
    )
    main = await channel.declare_queue(
        topology.queue(reactor),
        durable=True,
        arguments=_quorum_arguments(topology, dead_letter_to=dead_letters),
        timeout=call_timeout,
    )
    for delay_ms in sorted(set(topology.retry_delays_ms)):
        await channel.declare_queue(
            topology.wait_queue(reactor, delay_ms),
            durable=True,
            arguments={
                **_quorum_arguments(topology, dead_letter_to=topology.queue(reactor)),
                "x-message-ttl": delay_ms,
            },
            timeout=call_timeout,
        )
    for routing_key in subscription.routing_keys:
        await main.bind(topology.exchange, routing_key, timeout=call_timeout)


async def declare_topology(
    channel: AbstractChannel, topology: Topology, subscriptions: Iterable[Subscription], call_timeout: float
) -> None:
    await declare_exchange(channel, topology, call_timeout)
    for subscription in subscriptions:
        await declare_subscription(channel, topology, subscription, call_timeout)


async def missing_queues(
    open_channel: Callable[[], Awaitable[AbstractChannel]], names: Iterable[str], call_timeout: float
) -> list[str]:
    """Which of the queues `names` do not exist (a passive declare each: one round trip per queue).

    `open_channel` gives a channel that may be closed by the broker (a passive declare of a missing queue
    closes its channel with 404); it is asked again for each queue. Raises what the broker link raises.
    """
    missing: list[str] = []
    for name in names:
        channel = await open_channel()
        try:
            await channel.declare_queue(name, passive=True, timeout=call_timeout)
        except aiormq.exceptions.ChannelNotFoundEntity:
            missing.append(name)
    return missing


class QueueState(NamedTuple):
    """A queue as a passive declare sees it: messages ready for delivery (unacked ones not counted) and
    consumers. A queue that does not exist yet is (0, 0)."""

    ready: int
    consumers: int


async def queue_states(settings: Settings, queues: Sequence[str], name: str) -> dict[str, QueueState]:
    """The state of each queue, on a connection of its own (`name`), one passive declare each.

    Raises what the broker link raises (unreachable, a timeout): a failed probe is not an empty queue."""
    call_timeout = settings.broker_call_timeout_seconds
    states: dict[str, QueueState] = {}
    connection = await connect(settings, name)
    try:
        for queue in queues:
            # A passive declare of a missing queue closes its channel: one channel per queue.
            channel = await asyncio.wait_for(connection.channel(), call_timeout)
            try:
                declared = await channel.declare_queue(queue, passive=True, timeout=call_timeout)
                result = declared.declaration_result
                states[queue] = QueueState(int(result.message_count or 0), int(result.consumer_count or 0))
            except aiormq.exceptions.ChannelNotFoundEntity:
                states[queue] = QueueState(0, 0)
            finally:
                # The answer is in: a channel that fails to close (the broker closed it) changes nothing.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), call_timeout)
    finally:
        await close_quietly(connection, call_timeout)
    return states


async def delete_topology(
    channel: AbstractChannel, topology: Topology, reactors: Sequence[str], call_timeout: float
) -> None:
    """Remove the exchange and the reactors' queues (tests clean up their namespace with it)."""
    for reactor in reactors:
        for queue in topology.queues_of(reactor):
            await asyncio.wait_for(channel.queue_delete(queue), call_timeout)
    await asyncio.wait_for(channel.exchange_delete(topology.exchange), call_timeout)
