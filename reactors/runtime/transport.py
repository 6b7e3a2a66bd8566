"""Transport: one reactor's consuming connection (consume, watch, cancel, close) and its intake.

`Transport.open()` connects (a plain connection: the loop reconnects itself, so nothing is replayed
behind its back), declares the reactor's topology (idempotent: this is also how a deleted queue comes back),
sets the prefetch, and consumes with manual acks into an `Intake`. The returned `Consumption` ends for one of
three reasons, which `Consumption.ended()` returns:

- `STOPPED`: the caller's stop event was set (graceful shutdown);
- `LOST`: the connection or the channel closed (broker restart, network, a channel error);
- `CANCELLED`: the broker cancelled the consumer (basic.cancel: the queue was deleted, or its leader
  lost on a quorum queue). aio-pika only logs this and would leave the reactor idle, connected and
  seemingly healthy; here it ends the consumption so that the loop redeclares the topology and resumes;
- `DRIFTED`: another queue of the reactor's topology is missing (`Consumption.drifted`, called when a
  hand-over to a wait queue or the DLQ came back unroutable); the loop redeclares and resumes the same way,
  and the message whose hand-over failed comes back once this channel closes.

Errors: `open()` raises `BROKER_UNAVAILABLE` errors when the broker cannot be reached or refuses a call;
`TopologyRefused` when the broker refuses the declaration itself (406 PRECONDITION_FAILED: a queue exists
with other arguments; 403 ACCESS_REFUSED: no permission), which no retry fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from enum import Enum

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE, close_quietly, connect
from messaging.topology import Subscription, Topology, declare_subscription
from observability.metrics import metrics

log = logging.getLogger(__name__)


class Ended(Enum):
    STOPPED = "stopped"
    LOST = "lost"
    CANCELLED = "cancelled"
    DRIFTED = "drifted"


class TopologyRefused(Exception):
    """The broker refused to declare the reactor's queues (other arguments, or no permission)."""


# Refusals of a declaration that a retry cannot fix.
_REFUSALS = (aiormq.exceptions.ChannelPreconditionFailed, aiormq.exceptions.ChannelAccessRefused)


class Intake:
    """Messages delivered and not yet taken. A batch is whatever has arrived: taking waits for a first
    message, never for more."""

    def __init__(self) -> None:
        self._messages: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        # Whether every message taken so far was acked (a multiple ack is safe only then).
        self.settled_so_far = True

    def put(self, message: AbstractIncomingMessage) -> None:
        self._messages.append(message)
        self._arrived.set()

    async def take(self, limit: int) -> list[AbstractIncomingMessage]:
        """The messages that have arrived, oldest first, at most `limit`; waits for one if none has."""
        while not self._messages:
            self._arrived.clear()
            await self._arrived.wait()
        return self.take_now(limit)

    def take_now(self, limit: int) -> list[AbstractIncomingMessage]:
        """The messages that have arrived, oldest first, at most `limit` (none: an empty list)."""
        return [self._messages.popleft() for _ in range(min(limit, len(self._messages)))]


class Transport:
    """Opens consumptions of one reactor's queue, one connection each."""

    def __init__(self, settings: Settings, topology: Topology, subscription: Subscription) -> None:
        self._settings = settings
        self._topology = topology
        self._subscription = subscription

    @property
    def reactor(self) -> str:
        return self._subscription.reactor

    async def open(self) -> Consumption:
        """Connect, declare, consume. Raises `TopologyRefused` or a `BROKER_UNAVAILABLE` error (the
        connection is then closed)."""
        timeout = self._settings.broker_call_timeout_seconds
        connection = await connect(self._settings, f"reactor-{self.reactor}")
        try:
            channel = await asyncio.wait_for(connection.channel(), timeout)
            await channel.set_qos(prefetch_count=self._settings.reactor_prefetch, timeout=timeout)
            try:
                await declare_subscription(channel, self._topology, self._subscription, timeout)
            except _REFUSALS as err:
                raise TopologyRefused(f"{self.reactor}: the broker refused its queues: {err}") from err
            queue = await channel.get_queue(self._topology.queue(self.reactor), ensure=False)
            consumption = Consumption(
                self._settings, self._topology, self.reactor, connection, channel, queue
            )
            await consumption.start()
            return consumption
        except BaseException:
            await close_quietly(connection, timeout)
            raise


class Consumption:
    """One connection consuming the reactor's queue into `intake`, until `ended()` says why it stopped."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        reactor: str,
        connection: AbstractConnection,
        channel: AbstractChannel,
        queue: AbstractQueue,
    ) -> None:
        self._settings = settings
        self._topology = topology
        self._reactor = reactor
        self._connection = connection
        self._channel = channel
        self._queue = queue
        self._tag: str | None = None
        self._stopping = False
        self._lost = asyncio.Event()
        self._cancelled = asyncio.Event()
        self._drifted = asyncio.Event()
        # Deliveries of an earlier channel cannot be acked on this one: each consumption has its intake.
        self.intake = Intake()

    @property
    def queue_name(self) -> str:
        return self._queue.name

    async def start(self) -> None:
        timeout = self._settings.broker_call_timeout_seconds
        self._connection.close_callbacks.add(lambda *_: self._lost.set())
        self._channel.close_callbacks.add(lambda *_: self._lost.set())
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        self._tag = await self._queue.consume(self._on_message, timeout=timeout)

    async def ended(self, stop: asyncio.Event) -> Ended:
        """Wait until `stop` is set, the link is lost or the broker cancels the consumer; which it was
        (a stop wins when several happened)."""
        events = (stop, self._lost, self._cancelled, self._drifted)
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if stop.is_set():
            return Ended.STOPPED
        if self._cancelled.is_set():
            return Ended.CANCELLED
        return Ended.DRIFTED if self._drifted.is_set() else Ended.LOST

    def drifted(self, reason: str) -> None:
        """Report a queue of the topology missing (`reason`: what showed it); ends the consumption."""
        if not self._drifted.is_set():
            log.warning(
                "%s: a queue of its topology is missing (%s): redeclaring and resuming", self._reactor, reason
            )
            self._drifted.set()

    async def stop_consuming(self) -> None:
        """Take no more messages (those delivered and not taken stay unacked: the broker hands them out
        again once the channel closes)."""
        self._stopping = True
        if self._cancelled.is_set() or self._tag is None:
            return  # the broker has cancelled it already
        with contextlib.suppress(*BROKER_UNAVAILABLE):
            await self._queue.cancel(self._tag, timeout=self._settings.broker_call_timeout_seconds)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def close(self) -> None:
        await close_quietly(self._connection, self._settings.broker_call_timeout_seconds)

    async def watch_dead_letters(self) -> None:
        """Keep the DLQ depth gauge current (a passive declare answers the queue's message count), until
        cancelled."""
        timeout = self._settings.broker_call_timeout_seconds
        gauge = metrics().reactor_dlq_depth.labels(self._reactor)
        channel: AbstractChannel | None = None
        while True:
            try:
                if channel is None or channel.is_closed:
                    channel = await asyncio.wait_for(self._connection.channel(), timeout)
                queue = await channel.declare_queue(
                    self._topology.dead_letter_queue(self._reactor), passive=True, timeout=timeout
                )
                gauge.set(queue.declaration_result.message_count or 0)
            except Exception as err:  # a gauge is not worth more: the consumer loop handles the connection
                log.debug("%s: DLQ depth not read: %s", self._reactor, err)
            await asyncio.sleep(self._settings.metrics_refresh_seconds)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._stopping:  # else not acked: returned to the queue when the channel closes
            self.intake.put(message)

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag != self._tag:
            return
        log.warning(
            "%s: the broker cancelled the consumer of %s (queue deleted?): redeclaring and resuming",
            self._reactor,
            self._queue.name,
        )
        metrics().reactor_consumer_cancellations.labels(self._reactor).inc()
        self._cancelled.set()
