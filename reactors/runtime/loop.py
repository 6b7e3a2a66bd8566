"""The reactor runtime's loop: consume, take batches one at a time, recover, shut down.

`ReactorRuntime.run(stop)` repeats: open a consumption (`transport`), hand each batch taken from its intake
to the `handling.BatchHandler`, one batch at a time (also across reconnections, so two copies of an event
are never handled at once by one runtime), until the consumption ends. The next batch is taken and parsed
(CPU only: no ack, no SQL) while the last one commits, so that parsing overlaps the database's round trips;
what arrives meanwhile joins it once the last one has finished (up to `reactor_batch_size`):

- stop set: stop consuming, let the batch in flight finish within `reactor_shutdown_timeout_seconds`
  (messages delivered but not started stay unacked), close, return;
- connection or channel lost: reconnect with a backoff (0.2 s doubling up to
  `broker_reconnect_max_seconds`);
- consumer cancelled by the broker (its queue deleted), or another queue of its topology found missing
  (a wait queue, the DLQ): finish the batch in flight, then reconnect at once, which redeclares the queues
  and bindings (`reactor_consumer_recoveries` counts the resumes).

Beside the consumption, `recovery.RetrySweep` re-drives retries the broker lost on their way back from a
wait queue (every `reactor_retry_sweep_interval_seconds`).

Readiness: `ready` is set while consuming (and the gauge `reactor_consuming` is 1), cleared from the moment
the consumption ends until it resumes. `run` raises `TopologyRefused` when the broker refuses the
declaration of the reactor's queues (406: a queue exists with other arguments; 403): no retry fixes that,
so the process exits non-zero and its supervisor shows it (see README, "Changing a queue's arguments").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventType
from contracts.orders import EVENT_TYPES
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE
from messaging.topology import Topology
from observability.metrics import metrics
from reactors.base import Reactor, ReactorContext
from reactors.runtime.handling import BatchHandler, Fault, Parsed
from reactors.runtime.observe import Observer
from reactors.runtime.persistence import Ledger
from reactors.runtime.policy import FailurePolicy
from reactors.runtime.recovery import RetrySweep
from reactors.runtime.transport import Consumption, Ended, Intake, TopologyRefused, Transport

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.2


class ReactorRuntime:
    """Runs one reactor: its own consuming connection and its own publishing one (retries, DLQ)."""

    def __init__(
        self,
        reactor: Reactor,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        topology: Topology,
        *,
        event_types: dict[str, EventType] | None = None,
        fault: Fault | None = None,
    ) -> None:
        self.reactor = reactor
        self._settings = settings
        self._context = ReactorContext(settings, sessions)
        self._transport = Transport(settings, topology, reactor.subscription)
        ledger = Ledger(reactor, sessions)
        self._policy = FailurePolicy(settings, topology, ledger)
        self.retry_sweep = RetrySweep(settings, topology, reactor.name, sessions)
        self._handler = BatchHandler(
            reactor,
            settings,
            self._context,
            ledger,
            self._policy,
            Observer(reactor.name, topology.queue(reactor.name)),
            EVENT_TYPES if event_types is None else event_types,
            fault,
            self._drifted,
        )
        self._consumption: Consumption | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._one_batch = asyncio.Lock()
        self._aborted = False
        # Set while consuming; tests wait on it.
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, reconnecting after the broker went away or cancelled the consumer.
        Raises `TopologyRefused` (see the module docstring)."""
        backoff = FIRST_BACKOFF_SECONDS
        recovering = False
        # Beside the consumption, independent of it: retries the broker lost are re-driven from the outbox.
        sweeping = asyncio.ensure_future(self.retry_sweep.run(stop))
        try:
            while not stop.is_set() and not self._aborted:
                try:
                    ended = await self._consume_until(stop, recovering)
                    recovering = ended in (Ended.CANCELLED, Ended.DRIFTED)
                    backoff = FIRST_BACKOFF_SECONDS
                    if recovering:
                        continue  # at once: the queue is redeclared on the way back
                except TopologyRefused as err:
                    log.error("%s: %s; exiting so that the supervisor shows it", self.reactor.name, err)
                    raise
                except BROKER_UNAVAILABLE as err:
                    log.warning(
                        "%s: broker unavailable (%s), reconnecting in %.1fs", self.reactor.name, err, backoff
                    )
                if stop.is_set() or self._aborted:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._settings.broker_reconnect_max_seconds)
        finally:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
            await self.retry_sweep.close()
            self._set_ready(False)
            await self._policy.close()
            await self._context.aclose()

    async def abort(self) -> None:
        """Die like a killed process: drop the connection without acking, abandon what is in flight."""
        self._aborted = True
        for task in list(self._in_flight):
            task.cancel()
        if self._consumption is not None:
            await self._consumption.close()
        await self._policy.close()
        await self.retry_sweep.close()

    async def _consume_until(self, stop: asyncio.Event, recovering: bool) -> Ended:
        """One consumption, from connecting to closing; why it ended (STOPPED, CANCELLED, DRIFTED). Raises
        `ConnectionError` when the link was lost."""
        consumption = self._consumption = await self._transport.open()
        try:
            self._set_ready(True)
            log.info("%s: consuming %s", self.reactor.name, consumption.queue_name)
            if recovering:
                metrics().reactor_consumer_recoveries.labels(self.reactor.name).inc()
                log.warning("%s: consuming again, its topology redeclared", self.reactor.name)
            helpers = [
                asyncio.ensure_future(consumption.watch_dead_letters()),
                asyncio.ensure_future(self._take_batches(consumption)),
            ]
            try:
                ended = await consumption.ended(stop)
                self._set_ready(False)
                if ended is Ended.LOST:
                    raise ConnectionError("connection to the broker lost")
                await self._finish(consumption)
                return ended
            finally:
                for helper in helpers:
                    helper.cancel()
        finally:
            self._set_ready(False)
            await consumption.close()

    async def _finish(self, consumption: Consumption) -> None:
        """Stop consuming and let the batch in flight finish (bounded); the rest stays unacked."""
        await consumption.stop_consuming()
        if self._in_flight:
            log.info("%s: finishing the batch in flight", self.reactor.name)
            _, unfinished = await asyncio.wait(
                set(self._in_flight), timeout=self._settings.reactor_shutdown_timeout_seconds
            )
            for task in unfinished:  # unacked: the broker hands them out again
                task.cancel()

    async def _take_batches(self, consumption: Consumption) -> None:
        """Take and handle batches one at a time, in delivery order; the next batch is taken and parsed
        while the last one is handled (its commit, its mails), and handled once that one has finished."""
        intake = consumption.intake
        limit = self._settings.reactor_batch_size
        last: asyncio.Task[None] | None = None
        while True:
            messages = await intake.take(limit)
            if consumption.stopping:
                return  # not acked: returned to the queue when the channel closes
            parsed = self._handler.parse(messages)
            if last is not None:
                try:
                    # Shielded: a lost connection stops taking batches, not the one in flight (its acks just
                    # fail).
                    await asyncio.shield(last)
                except asyncio.CancelledError:
                    parsed.discard()
                    raise
                # What arrived meanwhile joins the batch, so that batches stay as large as without overlap.
                if more := intake.take_now(limit - len(messages)):
                    parsed.extend(self._handler.parse(more))
            if consumption.stopping:
                parsed.discard()
                return
            last = asyncio.ensure_future(self._handle(intake, parsed))
            self._in_flight.add(last)
            last.add_done_callback(self._in_flight.discard)

    async def _handle(self, intake: Intake, parsed: Parsed) -> None:
        async with self._one_batch:
            try:
                await self._handler.handle(intake, parsed)
            except Exception:  # a bug, not a message's fault: keep consuming, and acking one by one
                intake.settled_so_far = False
                log.exception(
                    "%s: unexpected failure on a batch of %d",
                    self.reactor.name,
                    len(parsed.deliveries) + len(parsed.unparsed),
                )

    def _drifted(self, reason: str) -> None:
        if self._consumption is not None:
            self._consumption.drifted(reason)

    def _set_ready(self, consuming: bool) -> None:
        if consuming:
            self.ready.set()
        else:
            self.ready.clear()
        metrics().reactor_consuming.labels(self.reactor.name).set(1 if consuming else 0)
