"""The reactor runtime: one per reactor, owning every transport concern so that handlers stay plain.

For each message: parse and validate the CloudEvent (tolerantly), then in ONE database transaction insert
the inbox row (consumer, message id) and apply the reactor's effects, then ack.

- Duplicate (inbox row exists): acked, no effect.
- Permanent error (not JSON, not a CloudEvent, unknown type or version, `PermanentError`): copied to the
  reactor's DLQ at once, then acked.
- Any other error: copied to a wait queue (TTL, then dead-lettered back to this reactor's queue only) with
  the attempt count in the `x-attempt` header, then acked; after `reactor_max_attempts` it goes to the DLQ.
- A consumer that dies before acking: the broker redelivers; the inbox absorbs it if the transaction had
  committed. A message that kills its consumer every time is dead-lettered by the broker itself after the
  quorum queue's `x-delivery-limit`.

Every step is written to the delivery ledger (`reactor_deliveries`), with the handling time and the trace id.
Its own connections: one consuming (manual acks, prefetch) and one publishing retries and dead letters
(confirmed). Graceful shutdown: stop consuming, let in-flight messages finish, close, all within
`reactor_shutdown_timeout_seconds`.

Observability: each message is handled in a consumer span continuing the `traceparent` header the relay set
(the reactor's SQL spans go under it), logged with its event and order ids, and counted (outcome, handling
time, event age); the depth of the reactor's DLQ is read every `metrics_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)
from opentelemetry.trace import SpanKind
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventType, InvalidEvent, ReceivedEvent, parse_event
from contracts.orders import EVENT_TYPES
from infra.db import rowcount
from infra.models import utcnow
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE, ConfirmedPublisher, close_quietly, connect
from messaging.topology import Topology, declare_subscription
from observability import tracing
from observability.logs import log_context
from observability.metrics import metrics
from reactors.base import PermanentError, Reactor, ReactorContext
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage

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
        self._in_flight: set[asyncio.Task[None]] = set()
        self._locks = _KeyedLocks()
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

    async def abort(self) -> None:
        """Die like a killed process: drop the connection without acking, abandon what is in flight."""
        self._aborted = True
        for task in list(self._in_flight):
            task.cancel()
        await close_quietly(self._connection, self._timeout)
        await self._publisher.close()

    async def _consume_until(self, stop: asyncio.Event) -> None:
        self._stopping = False
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
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in [*waiters, watcher]:
                    waiter.cancel()
            if not stop.is_set():
                raise ConnectionError("connection to the broker lost")
            await self._shut_down(queue, tag)
        finally:
            await close_quietly(connection, self._timeout)

    async def _shut_down(self, queue: AbstractQueue, tag: ConsumerTag) -> None:
        self._stopping = True
        with contextlib.suppress(*BROKER_UNAVAILABLE):
            await queue.cancel(tag, timeout=self._timeout)
        if self._in_flight:
            log.info("%s: finishing %d in-flight message(s)", self.reactor.name, len(self._in_flight))
            _, unfinished = await asyncio.wait(
                set(self._in_flight), timeout=self._settings.reactor_shutdown_timeout_seconds
            )
            for task in unfinished:  # unacked: the broker hands them out again
                task.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return  # not acked: returned to the queue when the channel closes
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._process(message)
        except BROKER_UNAVAILABLE as err:
            # Acking or handing over failed: the message stays unacked and comes back.
            log.warning("%s: message %s left unacked: %s", self.reactor.name, message.message_id, err)
        except Exception:
            log.exception("%s: unexpected failure on message %s", self.reactor.name, message.message_id)
        finally:
            self._in_flight.discard(task)

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

    async def _process(self, message: AbstractIncomingMessage) -> None:
        """Handle one message in a consumer span continuing the publisher's trace, and count its outcome."""
        started = asyncio.get_running_loop().time()
        name = self.reactor.name
        with (
            log_context(event_id=message.message_id),
            tracing.continue_trace(
                f"{name} process {message.type or 'message'}",
                parent=tracing.context_from(message.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self._topology.queue(name),
                    "messaging.message.id": message.message_id or "",
                    "messaging.consumer.group.name": name,
                },
            ) as span,
        ):
            outcome = await self._handle(message)
            span.set_attribute("reactor.outcome", outcome)
        label = METRIC_OUTCOMES[outcome]
        measured = metrics()
        measured.reactor_messages.labels(name, label).inc()
        measured.reactor_handling.labels(name, label).observe(asyncio.get_running_loop().time() - started)

    async def _handle(self, message: AbstractIncomingMessage) -> str:
        received_at = utcnow()
        attempt = _attempt_of(message)
        try:
            event = parse_event(message.body, self._event_types)
        except InvalidEvent as err:
            await self._dead_letter(message, None, attempt, str(err), received_at)
            return DeliveryOutcome.DEAD_LETTERED
        metrics().reactor_event_age.labels(self.reactor.name, event.type).observe(
            max((received_at - event.envelope.time).total_seconds(), 0.0)
        )
        # Two copies of one event in this process (a duplicate publish) run one after the other.
        async with self._locks.hold(event.id):
            with log_context(order_id=event.subject):
                try:
                    outcome = await self._apply(event, message, attempt, received_at)
                except PermanentError as err:
                    await self._dead_letter(message, event, attempt, _describe(err), received_at)
                    return DeliveryOutcome.DEAD_LETTERED
                except Exception as err:
                    return await self._retry_or_dead_letter(message, event, attempt, err, received_at)
                if self._fault is not None:
                    await self._fault("committed", event)
                await asyncio.wait_for(message.ack(), self._timeout)
                log.debug("%s: %s %s", self.reactor.name, outcome, event.id)
                return outcome

    async def _apply(
        self, event: ReceivedEvent, message: AbstractIncomingMessage, attempt: int, received_at: datetime
    ) -> str:
        if self.reactor.prepare is not None:
            # Skip the external effect for a known duplicate; the inbox insert below is the real guard.
            async with self._sessions() as session, session.begin():
                if await session.get(InboxMessage, (self.reactor.name, event.id)) is not None:
                    self._ledger(
                        session, event.id, event, attempt, received_at, DeliveryOutcome.DUPLICATE_IGNORED
                    )
                    return DeliveryOutcome.DUPLICATE_IGNORED
            await self.reactor.prepare(event, self._context)
        async with self._sessions() as session, session.begin():
            if not await self._insert_inbox(session, event):
                self._ledger(
                    session, event.id, event, attempt, received_at, DeliveryOutcome.DUPLICATE_IGNORED
                )
                return DeliveryOutcome.DUPLICATE_IGNORED
            await self.reactor.apply(event, session)
            detail = "redriven" if message.headers.get(DeadLetterHeaders.REDRIVEN) else None
            self._ledger(session, event.id, event, attempt, received_at, DeliveryOutcome.PROCESSED, detail)
        return DeliveryOutcome.PROCESSED

    async def _insert_inbox(self, session: AsyncSession, event: ReceivedEvent) -> bool:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        result = await session.execute(
            insert(InboxMessage)
            .values(
                consumer=self.reactor.name,
                message_id=event.id,
                event_type=event.type,
                subject=event.subject,
                processed_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=[InboxMessage.consumer, InboxMessage.message_id])
        )
        return rowcount(result) == 1

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
        try:
            async with self._sessions() as session, session.begin():
                self._ledger(session, message_id, event, attempt, received_at, outcome, detail)
        except Exception as err:
            log.warning("%s: could not record %s of %s: %s", self.reactor.name, outcome, message_id, err)

    def _ledger(
        self,
        session: AsyncSession,
        message_id: str,
        event: ReceivedEvent | None,
        attempt: int,
        received_at: datetime,
        outcome: str,
        detail: str | None = None,
    ) -> None:
        common = {
            "consumer": self.reactor.name,
            "message_id": message_id,
            "event_type": event.type if event is not None else None,
            "subject": event.subject if event is not None else None,
            "attempt": attempt,
            "trace_id": tracing.current_trace_id(),
        }
        now = utcnow()
        session.add(DeliveryRecord(**common, outcome=DeliveryOutcome.RECEIVED, created_at=received_at))
        session.add(
            DeliveryRecord(
                **common,
                outcome=outcome,
                detail=detail[:MAX_DETAIL_LENGTH] if detail else None,
                created_at=now,
                duration_ms=(now - received_at).total_seconds() * 1000,
            )
        )


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


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
