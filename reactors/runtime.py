"""The reactor runtime: one per reactor, owning every transport concern so that handlers stay plain.

Messages are handled in micro-batches: whatever has arrived (up to `reactor_batch_size`, within the
prefetch) is taken at once, without waiting for more, so a message alone is handled at once and a backlog
in batches. For each batch: parse and validate each CloudEvent (tolerantly), then in ONE database
transaction insert the batch's inbox rows (consumer, message id), apply the reactor's effects
(`Reactor.apply_all`) and write the ledger rows, then ack each message. A batch whose transaction fails is
handled again one message at a time, each in its own transaction (the per-message path below), so that
one bad message takes no good one down. A batch of one message takes that path directly.

- Duplicate (inbox row exists, or a second copy of an event in the same batch): acked, no effect.
- Permanent error (not JSON, not a CloudEvent, unknown type or version, `PermanentError`): copied to the
  reactor's DLQ at once, then acked.
- Any other error: copied to a wait queue (TTL, then dead-lettered back to this reactor's queue only) with
  the attempt count in the `x-attempt` header, then acked; after `reactor_max_attempts` it goes to the DLQ.
- A consumer that dies before acking: the broker redelivers; the inbox absorbs it if the transaction had
  committed. A message that kills its consumer every time is dead-lettered by the broker itself after the
  quorum queue's `x-delivery-limit`.

Every step is written to the delivery ledger (`reactor_deliveries`), with the handling time and the trace id.
Its own connections: one consuming (manual acks, prefetch) and one publishing retries and dead letters
(confirmed). One batch at a time, also across a reconnection, so two copies of an event are never handled
at once by one runtime. Graceful shutdown: stop consuming, let the batch in flight finish, close, all
within `reactor_shutdown_timeout_seconds`; messages delivered but not started are left unacked.

Observability: each message has a consumer span continuing the `traceparent` header the relay set, logged
with its event and order ids, and counted (outcome, handling time, event age). A message handled alone has
the reactor's SQL spans under its span; a batch's shared statements go under a batch span linked to the
span of each of its messages (one statement serves messages of several traces). The depth of the
reactor's DLQ is read every `metrics_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventType, InvalidEvent, ReceivedEvent, parse_event
from contracts.orders import EVENT_TYPES
from infra.models import utcnow
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE, ConfirmedPublisher, close_quietly, connect
from messaging.topology import Topology, declare_subscription
from observability import tracing
from observability.logs import log_context
from observability.metrics import metrics
from reactors.base import PermanentError, Reactor, ReactorContext
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.sql import dialect_insert, table_of

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-attempt"
MAX_DETAIL_LENGTH = 2_000
# Outcome label of the reactor_messages metric, by ledger outcome.
METRIC_OUTCOMES = {
    DeliveryOutcome.PROCESSED: "processed",
    DeliveryOutcome.DUPLICATE_IGNORED: "duplicate",
    DeliveryOutcome.RETRY_SCHEDULED: "retry",
    DeliveryOutcome.DEAD_LETTERED: "dead",
}

# Test seam: awaited at a named stage ("committed": effects committed, message not yet acked).
Fault = Callable[[str, ReceivedEvent], Awaitable[None]]


class DeadLetterHeaders:
    REACTOR = "x-reactor"
    REASON = "x-dead-letter-reason"
    ATTEMPTS = "x-attempts"
    AT = "x-dead-lettered-at"
    EVENT_TYPE = "x-event-type"
    SUBJECT = "x-subject"
    REDRIVEN = "x-redriven"


class ReactorRuntime:
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
        self._sessions = sessions
        self._topology = topology
        self._event_types = EVENT_TYPES if event_types is None else event_types
        self._fault = fault
        self._context = ReactorContext(settings, sessions)
        self._publisher = ConfirmedPublisher(settings, f"reactor-{reactor.name}-publish")
        self._connection: AbstractConnection | None = None
        self._intake = _Intake()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._one_batch = asyncio.Lock()
        self._stopping = False
        self._aborted = False
        # Set while consuming; tests wait on it.
        self.ready = asyncio.Event()

    @property
    def _timeout(self) -> float:
        return self._settings.broker_call_timeout_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, reconnecting after the broker went away."""
        backoff = 0.2
        try:
            while not stop.is_set() and not self._aborted:
                try:
                    await self._consume_until(stop)
                    backoff = 0.2
                except BROKER_UNAVAILABLE as err:
                    log.warning(
                        "%s: broker unavailable (%s), reconnecting in %.1fs", self.reactor.name, err, backoff
                    )
                finally:
                    self.ready.clear()
                if stop.is_set() or self._aborted:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._settings.broker_reconnect_max_seconds)
        finally:
            await self._publisher.close()
            await self._context.aclose()

    async def abort(self) -> None:
        """Die like a killed process: drop the connection without acking, abandon what is in flight."""
        self._aborted = True
        for task in list(self._in_flight):
            task.cancel()
        await close_quietly(self._connection, self._timeout)
        await self._publisher.close()

    async def _consume_until(self, stop: asyncio.Event) -> None:
        self._stopping = False
        # Deliveries of an earlier channel cannot be acked on this one: start with an empty intake.
        intake = self._intake = _Intake()
        connection = self._connection = await connect(self._settings, f"reactor-{self.reactor.name}")
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await asyncio.wait_for(connection.channel(), self._timeout)
            await channel.set_qos(prefetch_count=self._settings.reactor_prefetch, timeout=self._timeout)
            await declare_subscription(channel, self._topology, self.reactor.subscription, self._timeout)
            queue = await channel.get_queue(self._topology.queue(self.reactor.name), ensure=False)
            tag = await queue.consume(self._on_message, timeout=self._timeout)
            self.ready.set()
            log.info("%s: consuming %s", self.reactor.name, queue.name)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
            watcher = asyncio.ensure_future(self._watch_dead_letters(connection))
            batcher = asyncio.ensure_future(self._take_batches(intake))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if not stop.is_set():
                    raise ConnectionError("connection to the broker lost")
                await self._shut_down(queue, tag)
            finally:
                for waiter in [*waiters, watcher, batcher]:
                    waiter.cancel()
        finally:
            await close_quietly(connection, self._timeout)

    async def _shut_down(self, queue: AbstractQueue, tag: ConsumerTag) -> None:
        self._stopping = True
        with contextlib.suppress(*BROKER_UNAVAILABLE):
            await queue.cancel(tag, timeout=self._timeout)
        if self._in_flight:
            log.info("%s: finishing the batch in flight", self.reactor.name)
            _, unfinished = await asyncio.wait(
                set(self._in_flight), timeout=self._settings.reactor_shutdown_timeout_seconds
            )
            for task in unfinished:  # unacked: the broker hands them out again
                task.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._stopping:  # else not acked: returned to the queue when the channel closes
            self._intake.put(message)

    async def _take_batches(self, intake: _Intake) -> None:
        while True:
            messages = await intake.take(self._settings.reactor_batch_size)
            if self._stopping:
                return  # not acked: returned to the queue when the channel closes
            task = asyncio.ensure_future(self._handle_batch(intake, messages))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            # Shielded: a lost connection stops taking batches, not the one in flight (its acks just fail).
            await asyncio.shield(task)

    async def _watch_dead_letters(self, connection: AbstractConnection) -> None:
        """Keep the DLQ depth gauge current (a passive declare answers the queue's message count)."""
        gauge = metrics().reactor_dlq_depth.labels(self.reactor.name)
        channel: AbstractChannel | None = None
        while True:
            try:
                if channel is None or channel.is_closed:
                    channel = await asyncio.wait_for(connection.channel(), self._timeout)
                queue = await channel.declare_queue(
                    self._topology.dead_letter_queue(self.reactor.name), passive=True, timeout=self._timeout
                )
                gauge.set(queue.declaration_result.message_count or 0)
            except Exception as err:  # a gauge is not worth more: the consumer loop handles the connection
                log.debug("%s: DLQ depth not read: %s", self.reactor.name, err)
            await asyncio.sleep(self._settings.metrics_refresh_seconds)

    def _span(self, message: AbstractIncomingMessage) -> trace.Span:
        """The message's consumer span, continuing the publisher's trace (not made current). With tracing
        off, the publisher's span context itself, so that its trace id still reaches the logs and ledger."""
        name = self.reactor.name
        return tracing.tracer(tracing.INSTRUMENTATION_NAME).start_span(
            f"{name} process {message.type or 'message'}",
            context=tracing.context_from(message.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self._topology.queue(name),
                "messaging.message.id": message.message_id or "",
                "messaging.consumer.group.name": name,
            },
        )

    def _count(self, outcome: str, started: float) -> None:
        label = METRIC_OUTCOMES[outcome]
        measured = metrics()
        measured.reactor_messages.labels(self.reactor.name, label).inc()
        measured.reactor_handling.labels(self.reactor.name, label).observe(
            asyncio.get_running_loop().time() - started
        )

    def _observe_age(self, event: ReceivedEvent, received_at: datetime) -> None:
        metrics().reactor_event_age.labels(self.reactor.name, event.type).observe(
            max((received_at - event.envelope.time).total_seconds(), 0.0)
        )

    async def _handle_batch(self, intake: _Intake, messages: list[AbstractIncomingMessage]) -> None:
        async with self._one_batch:
            try:
                if len(messages) == 1:
                    intake.settled_so_far &= await self._handle_alone(messages[0])
                else:
                    await self._apply_batch(intake, messages)
            except Exception:  # a bug, not a message's fault: keep consuming, and acking one by one
                intake.settled_so_far = False
                log.exception("%s: unexpected failure on a batch of %d", self.reactor.name, len(messages))

    # --- one message at a time

    async def _handle_alone(self, message: AbstractIncomingMessage, span: trace.Span | None = None) -> bool:
        """Handle one message in its consumer span (made current: the reactor's SQL goes under it); whether
        it was acked."""
        started = asyncio.get_running_loop().time()
        try:
            with (
                trace.use_span(span or self._span(message), end_on_exit=True) as current,
                log_context(event_id=message.message_id),
            ):
                outcome = await self._handle(message)
                current.set_attribute("reactor.outcome", outcome)
            self._count(outcome, started)
            return True
        except BROKER_UNAVAILABLE as err:
            # Acking or handing over failed: the message stays unacked and comes back.
            log.warning("%s: message %s left unacked: %s", self.reactor.name, message.message_id, err)
        except Exception:
            log.exception("%s: unexpected failure on message %s", self.reactor.name, message.message_id)
        return False

    async def _handle(self, message: AbstractIncomingMessage) -> str:
        received_at = utcnow()
        attempt = _attempt_of(message)
        try:
            event = parse_event(message.body, self._event_types)
        except InvalidEvent as err:
            await self._dead_letter(message, None, attempt, str(err), received_at)
            return DeliveryOutcome.DEAD_LETTERED
        self._observe_age(event, received_at)
        with log_context(order_id=event.subject):
            try:
                outcome = await self._apply(event, message, attempt, received_at)
            except Exception as err:
                return await self._settle_failure(message, event, attempt, err, received_at)
            if self._fault is not None:
                await self._fault("committed", event)
            await asyncio.wait_for(message.ack(), self._timeout)
            log.debug("%s: %s %s", self.reactor.name, outcome, event.id)
            return outcome

    async def _apply(
        self, event: ReceivedEvent, message: AbstractIncomingMessage, attempt: int, received_at: datetime
    ) -> str:
        trace_id = tracing.current_trace_id()
        if self.reactor.prepares:
            # Skip the external effect for a known duplicate; the inbox insert below is the real guard.
            async with self._sessions() as session, session.begin():
                if await session.get(InboxMessage, (self.reactor.name, event.id)) is not None:
                    await self._write_ledger(
                        session,
                        self._ledger(
                            event.id, event, attempt, received_at, trace_id, DeliveryOutcome.DUPLICATE_IGNORED
                        ),
                    )
                    return DeliveryOutcome.DUPLICATE_IGNORED
            failed = await self.reactor.prepare_all([event], self._context)
            if event.id in failed:
                raise failed[event.id]
        async with self._sessions() as session, session.begin():
            if not await self._insert_inbox(session, [event]):
                outcome, detail = DeliveryOutcome.DUPLICATE_IGNORED, None
            else:
                await self.reactor.apply(event, session)
                outcome, detail = DeliveryOutcome.PROCESSED, _redriven(message)
            await self._write_ledger(
                session, self._ledger(event.id, event, attempt, received_at, trace_id, outcome, detail)
            )
        return outcome

    # --- a batch

    async def _apply_batch(self, intake: _Intake, messages: list[AbstractIncomingMessage]) -> None:
        """Several messages in one transaction; each message it did not settle is handled alone (first,
        so that the ones it settled can then be acked at once)."""
        started = asyncio.get_running_loop().time()
        received_at = utcnow()
        deliveries: list[_Delivery] = []
        for message in messages:
            try:
                event = parse_event(message.body, self._event_types)
            except InvalidEvent:
                intake.settled_so_far &= await self._handle_alone(message)  # dead-lettered alone, as always
                continue
            self._observe_age(event, received_at)
            deliveries.append(_Delivery(message, event, _attempt_of(message), self._span(message)))
        if not deliveries:
            return
        settled: dict[_Delivery, str] = {}  # the outcome of each delivery to ack
        finished: set[_Delivery] = set()  # settled already (their preparation failed)
        try:
            with self._batch_span(deliveries):
                leads: dict[str, _Delivery] = {}
                for delivery in deliveries:
                    leads.setdefault(delivery.event.id, delivery)
                if self.reactor.prepares:
                    for event_id, error in (await self._prepare(list(leads.values()))).items():
                        lead = leads.pop(event_id)
                        finished.add(lead)
                        intake.settled_so_far &= await self._settle_failed(lead, error, received_at, started)
                settled = await self._commit(deliveries, leads, received_at)
        except Exception as err:
            log.warning(
                "%s: batch of %d failed (%s), handling its messages one by one",
                self.reactor.name,
                len(deliveries),
                _describe(err),
            )
        for delivery in deliveries:
            if delivery not in finished and delivery not in settled:
                intake.settled_so_far &= await self._handle_alone(delivery.message, delivery.span)
        await self._acknowledge(
            [(delivery, outcome) for delivery, outcome in settled.items()], started, intake
        )

    def _batch_span(self, deliveries: list[_Delivery]) -> contextlib.AbstractContextManager[trace.Span]:
        """The span of a batch's shared work (its SQL goes under it): a root, since its messages belong to
        different traces, linked to each message's span."""
        return tracing.tracer(tracing.INSTRUMENTATION_NAME).start_as_current_span(
            f"{self.reactor.name} process batch",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=[Link(delivery.span.get_span_context()) for delivery in deliveries],
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self._topology.queue(self.reactor.name),
                "messaging.batch.message_count": len(deliveries),
                "messaging.consumer.group.name": self.reactor.name,
            },
        )

    async def _prepare(self, leads: list[_Delivery]) -> dict[str, Exception]:
        """Prepare the events not known to be applied already (the inbox insert is the real guard)."""
        async with self._sessions() as session:
            applied = set(
                await session.scalars(
                    select(InboxMessage.message_id).where(
                        InboxMessage.consumer == self.reactor.name,
                        InboxMessage.message_id.in_([lead.event.id for lead in leads]),
                    )
                )
            )
        return await self.reactor.prepare_all(
            [lead.event for lead in leads if lead.event.id not in applied], self._context
        )

    async def _commit(
        self, deliveries: list[_Delivery], leads: dict[str, _Delivery], received_at: datetime
    ) -> dict[_Delivery, str]:
        """Inbox rows, effects and ledger rows of the batch in one transaction; the outcome of each delivery
        it settled. The first copy of an event (its lead) is applied unless its inbox row
        exists; other copies are duplicates, unless the lead failed to prepare (then handled alone)."""
        outcomes: dict[_Delivery, str] = {}
        rows: list[dict[str, object]] = []
        async with self._sessions() as session, session.begin():
            fresh = await self._insert_inbox(session, [lead.event for lead in leads.values()])
            await self.reactor.apply_all(
                [lead.event for lead in leads.values() if lead.event.id in fresh], session
            )
            for delivery in deliveries:
                lead = leads.get(delivery.event.id)
                if lead is None:
                    continue
                processed = delivery is lead and delivery.event.id in fresh
                outcome = DeliveryOutcome.PROCESSED if processed else DeliveryOutcome.DUPLICATE_IGNORED
                rows += self._ledger(
                    delivery.event.id,
                    delivery.event,
                    delivery.attempt,
                    received_at,
                    _trace_id(delivery.span),
                    outcome,
                    _redriven(delivery.message) if processed else None,
                )
                outcomes[delivery] = outcome
            await self._write_ledger(session, rows)
        return outcomes

    async def _settle_failed(
        self, lead: _Delivery, error: Exception, received_at: datetime, started: float
    ) -> bool:
        """A delivery whose preparation failed: retried or dead-lettered (and acked), in its own span;
        whether it was acked."""
        try:
            with (
                trace.use_span(lead.span, end_on_exit=True),
                log_context(event_id=lead.event.id, order_id=lead.event.subject),
            ):
                outcome = await self._settle_failure(
                    lead.message, lead.event, lead.attempt, error, received_at
                )
                lead.span.set_attribute("reactor.outcome", outcome)
        except BROKER_UNAVAILABLE as err:
            log.warning("%s: message %s left unacked: %s", self.reactor.name, lead.event.id, err)
            return False
        self._count(outcome, started)
        return True

    async def _acknowledge(
        self, settled: list[tuple[_Delivery, str]], started: float, intake: _Intake
    ) -> None:
        """Ack the deliveries the batch's transaction settled (in delivery order). With one multiple ack if
        every delivery before them on this channel was acked: batches go one at a time, in delivery order,
        and whatever was not settled of this batch was handled alone before, so a multiple ack then covers
        these deliveries only. Otherwise (a message left unacked must stay so) one ack each."""
        if not settled:
            return
        try:
            for delivery, _ in settled:
                if self._fault is not None:
                    with trace.use_span(delivery.span), log_context(event_id=delivery.event.id):
                        await self._fault("committed", delivery.event)
            if intake.settled_so_far:
                await asyncio.wait_for(settled[-1][0].message.ack(multiple=True), self._timeout)
            else:
                for delivery, _ in settled:
                    await asyncio.wait_for(delivery.message.ack(), self._timeout)
        except BROKER_UNAVAILABLE as err:
            intake.settled_so_far = False
            log.warning("%s: %d message(s) left unacked: %s", self.reactor.name, len(settled), err)
            for delivery, _ in settled:
                delivery.span.end()
            return
        for delivery, outcome in settled:
            delivery.span.set_attribute("reactor.outcome", outcome)
            delivery.span.end()
            self._count(outcome, started)
            log.debug("%s: %s %s", self.reactor.name, outcome, delivery.event.id)

    # --- settling failures, the inbox and the ledger

    async def _settle_failure(
        self,
        message: AbstractIncomingMessage,
        event: ReceivedEvent,
        attempt: int,
        error: Exception,
        received_at: datetime,
    ) -> str:
        if isinstance(error, PermanentError):
            await self._dead_letter(message, event, attempt, _describe(error), received_at)
            return DeliveryOutcome.DEAD_LETTERED
        return await self._retry_or_dead_letter(message, event, attempt, error, received_at)

    async def _insert_inbox(self, session: AsyncSession, events: Sequence[ReceivedEvent]) -> set[str]:
        """Insert the events' inbox rows; the ids of those that were not there yet."""
        if not events:
            return set()
        now = utcnow()
        # Parameters apart from the statement: its compiled form is cached (SQLAlchemy's "insertmanyvalues"
        # still sends one multi-row INSERT).
        inserted = await session.scalars(
            dialect_insert(session)(InboxMessage)
            .on_conflict_do_nothing(index_elements=[InboxMessage.consumer, InboxMessage.message_id])
            .returning(InboxMessage.message_id),
            [
                {
                    "consumer": self.reactor.name,
                    "message_id": event.id,
                    "event_type": event.type,
                    "subject": event.subject,
                    "processed_at": now,
                }
                for event in events
            ],
        )
        return set(inserted)

    async def _retry_or_dead_letter(
        self,
        message: AbstractIncomingMessage,
        event: ReceivedEvent,
        attempt: int,
        error: Exception,
        received_at: datetime,
    ) -> str:
        reason = _describe(error)
        if attempt >= self._settings.reactor_max_attempts:
            await self._dead_letter(
                message, event, attempt, f"gave up after {attempt} attempt(s): {reason}", received_at
            )
            return DeliveryOutcome.DEAD_LETTERED
        wait_queue = self._topology.retry_queue_for(self.reactor.name, attempt)
        await self._publisher.publish(
            exchange="",
            routing_key=wait_queue,
            body=message.body,
            message_id=event.id,
            message_type=event.type,
            content_type=message.content_type or "application/json",
            headers={**_own_headers(message), ATTEMPT_HEADER: attempt + 1, "x-last-error": reason[:500]},
        )
        await self._record(
            event.id,
            event,
            attempt,
            received_at,
            DeliveryOutcome.RETRY_SCHEDULED,
            f"{reason} -> {wait_queue}",
        )
        await asyncio.wait_for(message.ack(), self._timeout)
        log.info("%s: %s attempt %d failed (%s), retrying", self.reactor.name, event.id, attempt, reason)
        return DeliveryOutcome.RETRY_SCHEDULED

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        event: ReceivedEvent | None,
        attempt: int,
        reason: str,
        received_at: datetime,
    ) -> None:
        message_id = event.id if event is not None else (message.message_id or "unknown")
        await self._publisher.publish(
            exchange="",
            routing_key=self._topology.dead_letter_queue(self.reactor.name),
            body=message.body,
            message_id=message_id,
            message_type=event.type if event is not None else message.type,
            content_type=message.content_type or "application/json",
            headers={
                **_own_headers(message),
                DeadLetterHeaders.REACTOR: self.reactor.name,
                DeadLetterHeaders.REASON: reason[:1_000],
                DeadLetterHeaders.ATTEMPTS: attempt,
                DeadLetterHeaders.AT: utcnow().isoformat(),
                DeadLetterHeaders.EVENT_TYPE: event.type if event is not None else (message.type or ""),
                DeadLetterHeaders.SUBJECT: event.subject if event is not None else "",
            },
        )
        await self._record(message_id, event, attempt, received_at, DeliveryOutcome.DEAD_LETTERED, reason)
        await asyncio.wait_for(message.ack(), self._timeout)
        log.warning("%s: dead-lettered %s: %s", self.reactor.name, message_id, reason)

    async def _record(
        self,
        message_id: str,
        event: ReceivedEvent | None,
        attempt: int,
        received_at: datetime,
        outcome: str,
        detail: str,
    ) -> None:
        """The ledger of a delivery that made no effect; losing it must not lose the message."""
        trace_id = tracing.current_trace_id()
        try:
            async with self._sessions() as session, session.begin():
                await self._write_ledger(
                    session, self._ledger(message_id, event, attempt, received_at, trace_id, outcome, detail)
                )
        except Exception as err:
            log.warning("%s: could not record %s of %s: %s", self.reactor.name, outcome, message_id, err)

    def _ledger(
        self,
        message_id: str,
        event: ReceivedEvent | None,
        attempt: int,
        received_at: datetime,
        trace_id: str | None,
        outcome: str,
        detail: str | None = None,
    ) -> list[dict[str, object]]:
        """The two ledger rows of a delivery: received, then its outcome."""
        common = {
            "consumer": self.reactor.name,
            "message_id": message_id,
            "event_type": event.type if event is not None else None,
            "subject": event.subject if event is not None else None,
            "attempt": attempt,
            "trace_id": trace_id,
        }
        now = utcnow()
        return [
            {
                **common,
                "outcome": DeliveryOutcome.RECEIVED,
                "detail": None,
                "created_at": received_at,
                "duration_ms": None,
            },
            {
                **common,
                "outcome": outcome,
                "detail": detail[:MAX_DETAIL_LENGTH] if detail else None,
                "created_at": now,
                "duration_ms": (now - received_at).total_seconds() * 1000,
            },
        ]

    @staticmethod
    async def _write_ledger(session: AsyncSession, rows: list[dict[str, object]]) -> None:
        """One Core insert for all the rows (no ORM objects: the ledger is written on every message)."""
        if rows:
            await session.execute(insert(table_of(DeliveryRecord)), rows)


class _Intake:
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
        while not self._messages:
            self._arrived.clear()
            await self._arrived.wait()
        return [self._messages.popleft() for _ in range(min(limit, len(self._messages)))]


@dataclass(eq=False)  # hashed by identity: two copies of one event are two deliveries
class _Delivery:
    """A parsed message of a batch, with its consumer span (started, not current)."""

    message: AbstractIncomingMessage
    event: ReceivedEvent
    attempt: int
    span: trace.Span


def _attempt_of(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(ATTEMPT_HEADER)
    return value if isinstance(value, int) and value >= 1 else 1


def _own_headers(message: AbstractIncomingMessage) -> dict[str, object]:
    """The message's headers without the broker's bookkeeping (x-death, delivery counts)."""
    skip = {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
    }
    return {key: value for key, value in message.headers.items() if key not in skip}


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _redriven(message: AbstractIncomingMessage) -> str | None:
    return "redriven" if message.headers.get(DeadLetterHeaders.REDRIVEN) else None


def _trace_id(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
