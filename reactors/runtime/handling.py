"""Handling a batch of messages: the one path, for a lone message (a batch of one) and a backlog alike.

For a batch (1 to `reactor_batch_size` messages, in delivery order):

1. Parse each message (a CloudEvent of a known type and version); one that is not goes to the DLQ at once.
2. Prepare (`Reactor.prepare_all`, effects outside the database, such as a mail) the first copy of each
   event not applied before; an event whose preparation failed is retried or dead-lettered on its own.
3. One transaction: inbox rows, the reactor's effects, ledger rows (`persistence.Ledger.commit`).
4. Ack what the transaction settled, in delivery order.

If step 2 or 3 raises for a batch of several, each of its messages not settled yet is handled again as a
batch of its own, so only the failing message is retried; for a batch of one, the error is that message's
(`policy.FailurePolicy.settle`). Messages that are copies of an event whose preparation failed are handled
alone too. Nothing here raises: a message whose settling fails (the broker went away) stays unacked, and
the intake is told (`Intake.settled_so_far`), so that later acks go one by one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from contracts.envelope import EventType, InvalidEvent, ReceivedEvent, parse_event
from infra.models import utcnow
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE
from observability.logs import log_context
from reactors.base import Reactor, ReactorContext
from reactors.models import DeliveryOutcome
from reactors.runtime.observe import Observer
from reactors.runtime.persistence import Delivery, Ledger
from reactors.runtime.policy import FailurePolicy, attempt_of, describe
from reactors.runtime.transport import Intake

log = logging.getLogger(__name__)

# Test seam: awaited at a named stage ("committed": effects committed, message not yet acked).
Fault = Callable[[str, ReceivedEvent], Awaitable[None]]
# Told that a queue of the reactor's topology is missing (a hand-over to it came back unroutable).
OnDrift = Callable[[str], None]


@dataclass
class Parsed:
    """A batch after step 1: when it was taken (`started`, loop time; `received_at`, UTC), its deliveries
    in delivery order, and the messages that could not be parsed, with why."""

    started: float
    received_at: datetime
    deliveries: list[Delivery] = field(default_factory=list)
    unparsed: list[tuple[AbstractIncomingMessage, InvalidEvent]] = field(default_factory=list)

    def extend(self, more: Parsed) -> None:
        """Append the messages of `more`, taken after these (the batch keeps its time)."""
        self.deliveries += more.deliveries
        self.unparsed += more.unparsed

    def discard(self) -> None:
        """Not handled after all (the consumption stopped): end the spans; the messages stay unacked."""
        for delivery in self.deliveries:
            delivery.span.end()


class BatchHandler:
    def __init__(
        self,
        reactor: Reactor,
        settings: Settings,
        context: ReactorContext,
        ledger: Ledger,
        policy: FailurePolicy,
        observer: Observer,
        event_types: dict[str, EventType],
        fault: Fault | None = None,
        on_drift: OnDrift | None = None,
    ) -> None:
        self._reactor = reactor
        self._on_drift = on_drift
        self._settings = settings
        self._context = context
        self._ledger = ledger
        self._policy = policy
        self._observe = observer
        self._event_types = event_types
        self._fault = fault

    @property
    def _name(self) -> str:
        return self._reactor.name

    def parse(self, messages: Sequence[AbstractIncomingMessage]) -> Parsed:
        """Step 1 without its I/O (no ack, no database), so that the loop can parse the next batch while the
        last one commits: the deliveries of `messages` and the messages that are no event this reactor
        knows (dead-lettered by `handle`)."""
        parsed = Parsed(asyncio.get_running_loop().time(), utcnow())
        for message in messages:
            try:
                event = parse_event(message.body, self._event_types)
            except InvalidEvent as err:
                parsed.unparsed.append((message, err))
                continue
            self._observe.age(event, parsed.received_at)
            attempt = attempt_of(message)
            parsed.deliveries.append(
                Delivery(
                    message,
                    replace(event, attempt=attempt),
                    attempt,
                    self._observe.consumer_span(message),
                )
            )
        return parsed

    async def handle(self, intake: Intake, parsed: Parsed) -> None:
        """Handle one parsed batch taken from `intake` (its deliveries' acks go to their own channel)."""
        for message, err in parsed.unparsed:
            intake.settled_so_far &= await self._dead_letter_unparsed(
                message, err, parsed.received_at, parsed.started
            )
        if parsed.deliveries:
            await self._handle(intake, parsed.deliveries, parsed.received_at, parsed.started)

    async def _handle(
        self,
        intake: Intake,
        deliveries: list[Delivery],
        received_at: datetime,
        started: float,
        fallback: bool = False,
    ) -> None:
        """Prepare, commit and ack `deliveries`; `fallback`: they are what is left of a larger batch, whose
        other deliveries may be acked after them (then each is acked on its own, never with a multiple ack,
        which would ack those too, and acking a delivery twice makes the broker close the channel)."""
        settled: dict[Delivery, str] = {}  # the outcome of each delivery to ack
        finished: set[Delivery] = set()  # settled on their own already (their preparation failed)
        failure: Exception | None = None
        try:
            with self._observe.work_of(deliveries):
                leads: dict[str, Delivery] = {}
                for delivery in deliveries:
                    leads.setdefault(delivery.event.id, delivery)
                if self._reactor.prepares:
                    for event_id, error in (await self._prepare(list(leads.values()))).items():
                        lead = leads.pop(event_id)
                        finished.add(lead)
                        intake.settled_so_far &= await self._settle_failed(lead, error, received_at, started)
                if leads:
                    settled = await self._ledger.commit(deliveries, leads, received_at)
                    if self._reactor.committed is not None:
                        self._reactor.committed(list(leads), self._context)
        except Exception as err:
            failure = err
        rest = [delivery for delivery in deliveries if delivery not in finished and delivery not in settled]
        if failure is not None and len(deliveries) == 1:
            for delivery in rest:  # the error is this message's
                intake.settled_so_far &= await self._settle_failed(delivery, failure, received_at, started)
            rest = []
        elif failure is not None:
            log.warning(
                "%s: batch of %d failed (%s), handling its messages one by one",
                self._name,
                len(deliveries),
                describe(failure),
            )
        for delivery in rest:
            await self._handle(intake, [delivery], received_at, started, fallback=True)
        await self._acknowledge(
            [(delivery, outcome) for delivery, outcome in settled.items()],
            started,
            intake,
            multiple=intake.settled_so_far and not fallback,
        )

    async def _prepare(self, leads: list[Delivery]) -> dict[str, Exception]:
        """Prepare the events not known to be applied already (unless the reactor finds those itself); the
        error of each that failed, by id."""
        lookup = leads and not self._reactor.prepare_skips_applied
        applied = await self._ledger.applied([lead.event.id for lead in leads]) if lookup else set()
        return await self._reactor.prepare_all(
            [lead.event for lead in leads if lead.event.id not in applied], self._context
        )

    async def _settle_failed(
        self, delivery: Delivery, error: Exception, received_at: datetime, started: float
    ) -> bool:
        """Retry or dead-letter (and ack) a delivery whose handling failed, in its span (then ended);
        whether it was acked."""
        event = delivery.event
        with (
            trace.use_span(delivery.span, end_on_exit=True),
            log_context(event_id=event.id, order_id=event.subject),
        ):
            try:
                outcome = await self._policy.settle(
                    delivery.message, event, delivery.attempt, error, received_at
                )
            except aiormq.exceptions.PublishError as err:
                self._drifted(event.id, err)
                return False
            except BROKER_UNAVAILABLE as err:
                # Handing over or acking failed: the message stays unacked and comes back.
                log.warning("%s: message %s left unacked: %s", self._name, event.id, err)
                return False
            except Exception:
                log.exception("%s: unexpected failure on message %s", self._name, event.id)
                return False
            delivery.span.set_attribute("reactor.outcome", outcome)
        self._observe.count(outcome, started)
        return True

    async def _dead_letter_unparsed(
        self, message: AbstractIncomingMessage, error: InvalidEvent, received_at: datetime, started: float
    ) -> bool:
        """A message that is no event this reactor knows: to the DLQ at once, in its own span; whether it
        was acked."""
        with (
            trace.use_span(self._observe.consumer_span(message), end_on_exit=True) as span,
            log_context(event_id=message.message_id),
        ):
            try:
                await self._policy.dead_letter(message, None, attempt_of(message), str(error), received_at)
            except aiormq.exceptions.PublishError as err:
                self._drifted(message.message_id, err)
                return False
            except BROKER_UNAVAILABLE as err:
                log.warning("%s: message %s left unacked: %s", self._name, message.message_id, err)
                return False
            except Exception:
                log.exception("%s: unexpected failure on message %s", self._name, message.message_id)
                return False
            span.set_attribute("reactor.outcome", DeliveryOutcome.DEAD_LETTERED)
        self._observe.count(DeliveryOutcome.DEAD_LETTERED, started)
        return True

    def _drifted(self, message_id: str | None, err: Exception) -> None:
        """A hand-over (to a wait queue, the DLQ) was returned unroutable: that queue is missing. The
        message stays unacked (it comes back when the channel closes); the loop redeclares the topology."""
        log.warning(
            "%s: message %s left unacked, its hand-over was unroutable: %s", self._name, message_id, err
        )
        if self._on_drift is not None:
            self._on_drift(f"hand-over of {message_id} unroutable")

    async def _acknowledge(
        self, settled: list[tuple[Delivery, str]], started: float, intake: Intake, *, multiple: bool
    ) -> None:
        """Ack the deliveries the transaction settled (in delivery order). With one multiple ack when
        `multiple` (every delivery before them on this channel was acked: batches go one at a time, in
        delivery order, and whatever was not settled of this batch was handled before, so a multiple ack
        then covers these deliveries only). Otherwise (a message left unacked must stay so) one ack each."""
        if not settled:
            return
        timeout = self._settings.broker_call_timeout_seconds
        try:
            for delivery, _ in settled:
                if self._fault is not None:
                    with trace.use_span(delivery.span), log_context(event_id=delivery.event.id):
                        await self._fault("committed", delivery.event)
            if multiple:
                await asyncio.wait_for(settled[-1][0].message.ack(multiple=True), timeout)
            else:
                for delivery, _ in settled:
                    await asyncio.wait_for(delivery.message.ack(), timeout)
        except BROKER_UNAVAILABLE as err:
            intake.settled_so_far = False
            log.warning("%s: %d message(s) left unacked: %s", self._name, len(settled), err)
            for delivery, _ in settled:
                delivery.span.end()
            return
        for delivery, outcome in settled:
            delivery.span.set_attribute("reactor.outcome", outcome)
            delivery.span.end()
            self._observe.count(outcome, started)
            log.debug("%s: %s %s", self._name, outcome, delivery.event.id)
