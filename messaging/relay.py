"""The outbox relay: publishes pending outbox rows to the events exchange, then marks them published.

At least once: a crash between the broker's confirm and the `published` mark publishes the row again on
restart, with the same message id, and the reactors' inboxes absorb the duplicate.

- Wake-up: on PostgreSQL the writer's transaction fires NOTIFY (delivered on commit) and the relay LISTENs,
  so a new event goes out within milliseconds; a slow poll is only the safety net. SQLite has no NOTIFY and
  the relay runs in another process than the worker, so it polls the pending-rows index every 100 ms
  (cheap: an indexed read of an in-WAL page).
- Several relays on PostgreSQL: each claims a batch with FOR UPDATE SKIP LOCKED and holds the locks while
  it publishes, so no row is published by two relays at once. SQLite: run one relay; it reads the batch,
  publishes outside any transaction (which would hold SQLite's single write lock), then marks the rows.
- Broker down: rows stay pending (their attempts and last error recorded) and the relay backs off; sagas are
  unaffected, since they only write rows. The rows drain when the broker is back.
- Unroutable (no queue bound for the routing key), nacked: the row stays pending with the error and is
  retried later with a per-row backoff, so it cannot block the rows behind it.
- A reactor's queue deleted (by an operator, say) is not an unroutable case when other reactors' queues
  still take the event: the broker confirms and that reactor would silently miss it. So around every batch
  the relay checks that the queue of each registered subscription exists (a passive declare each): one
  missing before the batch is declared again (with its bindings) before publishing; one missing after
  the batch was confirmed may have missed some of it, so the batch stays pending and is published again
  (after the queue is declared again; the other reactors' inboxes absorb the copies). Counted in
  `relay_queues_redeclared`. What remains: a queue deleted *and* declared again between the two checks of
  one batch (milliseconds), and the messages inside a queue when it is deleted, which deleting destroys
  (change a queue's arguments with `order-saga queues migrate`, which moves them, instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aio_pika.exceptions import DeliveryError
from opentelemetry.trace import SpanKind
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import STRUCTURED_CONTENT_TYPE
from infra.models import utcnow
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE, ConfirmedPublisher
from messaging.models import PENDING, PUBLISHED, OutboxEvent
from messaging.outbox import OUTBOX_CHANNEL
from messaging.topology import Subscription, Topology, declare_subscription, declare_topology, missing_queues
from observability import tracing
from observability.logs import log_context
from observability.metrics import metrics

log = logging.getLogger(__name__)

# Per-row backoff after the broker refused that row (unroutable, nack): 0.5 s doubling up to this.
ROW_RETRY_MAX_SECONDS = 30.0
MAX_ERROR_LENGTH = 2_000

AfterConfirm = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class PendingEvent:
    id: str
    routing_key: str
    event_type: str
    envelope: dict[str, Any]
    attempts: int
    created_at: datetime
    subject: str = ""
    traceparent: str | None = None


@dataclass(frozen=True)
class Confirmed:
    """A publish the broker confirmed: when it was sent (the row's `published_at`), and how long the
    confirm took. Recorded per row, since the batch is marked only once every publish has ended."""

    sent_at: datetime
    confirm_ms: float


@dataclass
class BatchResult:
    published: list[str] = field(default_factory=list)
    confirmed: dict[str, Confirmed] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # row-specific: unroutable, nacked
    broker_error: str | None = None  # the broker or the link failed: all unpublished rows wait

    @property
    def size(self) -> int:
        return len(self.published) + len(self.refused)


class OutboxRelay:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        topology: Topology,
        subscriptions: Sequence[Subscription] = (),
        *,
        name: str = "outbox-relay",
        after_confirm: AfterConfirm | None = None,
    ) -> None:
        """`subscriptions` are declared on every (re)connection, so events are routable from the start.
        `after_confirm` runs after each confirmed publish, before the row is marked (a test seam for a
        relay that dies right there)."""
        self._settings = settings
        self._sessions = sessions
        self._topology = topology
        self._subscriptions = tuple(subscriptions)
        self._publisher = ConfirmedPublisher(settings, name)
        self._after_confirm = after_confirm
        self._declared_generation = -1
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._gauges_refreshed_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; survives broker and database outages."""
        backoff = 0.1
        poll = (
            self._settings.outbox_sqlite_poll_interval_seconds
            if self._settings.is_sqlite
            else self._settings.outbox_poll_interval_seconds
        )
        try:
            while not stop.is_set():
                await self._ensure_listener()
                await self._refresh_gauges_when_due()
                self._wake.clear()  # a NOTIFY from now on triggers another pass
                try:
                    result = await self.publish_pending()
                except Exception as err:  # the database is unavailable: keep the process alive
                    log.warning("outbox relay pass failed: %s", err)
                    result = BatchResult(broker_error=str(err))
                if result.broker_error is not None:
                    log.warning("broker unavailable, retrying in %.1fs: %s", backoff, result.broker_error)
                    await _wait_any(stop, None, backoff)
                    backoff = min(backoff * 2, self._settings.broker_reconnect_max_seconds)
                    continue
                backoff = 0.1
                if result.size >= self._settings.outbox_batch_size:
                    continue  # more may be waiting
                await _wait_any(stop, self._wake, poll)
        finally:
            await self.close()

    async def publish_pending(self) -> BatchResult:
        """One pass: publish up to a batch of due rows and record the outcome of each."""
        if self._settings.is_sqlite:
            async with self._sessions() as session, session.begin():
                batch = await self._due_rows(session, lock=False)
            result = await self._publish(batch)
            if batch:
                async with self._sessions() as session, session.begin():
                    await self._record(session, batch, result)
            return result
        async with self._sessions() as session, session.begin():
            batch = await self._due_rows(session, lock=True)
            result = await self._publish(batch)
            if batch:
                await self._record(session, batch, result)
        return result

    async def refresh_gauges(self) -> None:
        """Set the outbox gauges: how many rows wait, and how long the oldest has been waiting."""
        async with self._sessions() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(OutboxEvent.created_at)).where(
                        OutboxEvent.status == PENDING
                    )
                )
            ).one()
        measured = metrics()
        measured.outbox_pending.set(count)
        # min() keeps the column's type: an aware datetime on both backends, None when nothing waits.
        measured.outbox_oldest_pending_age.set(
            max((utcnow() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        )

    async def _refresh_gauges_when_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._gauges_refreshed_at < self._settings.metrics_refresh_seconds:
            return
        self._gauges_refreshed_at = now
        try:
            await self.refresh_gauges()
        except Exception as err:  # the database is unavailable: the pass below logs it
            log.debug("outbox gauges not refreshed: %s", err)

    async def close(self) -> None:
        await self._publisher.close()
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), self._settings.broker_call_timeout_seconds)

    async def _due_rows(self, session: AsyncSession, *, lock: bool) -> list[PendingEvent]:
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.status == PENDING, OutboxEvent.available_at <= utcnow())
            .order_by(OutboxEvent.available_at, OutboxEvent.created_at)
            .limit(self._settings.outbox_batch_size)
        )
        if lock:
            query = query.with_for_update(skip_locked=True)
        rows = (await session.scalars(query)).all()
        return [
            PendingEvent(
                row.id,
                row.routing_key,
                row.event_type,
                row.envelope,
                row.attempts,
                row.created_at,
                subject=row.subject,
                traceparent=row.traceparent,
            )
            for row in rows
        ]

    async def _publish(self, batch: list[PendingEvent]) -> BatchResult:
        result = BatchResult()
        if not batch:
            return result
        try:
            await self._ensure_topology()
            await self._redeclare_missing_queues()
        except BROKER_UNAVAILABLE as err:
            result.broker_error = _describe(err)
            return result
        # Publish the batch concurrently: confirms come back pipelined instead of one round trip each.
        outcomes = await asyncio.gather(*(self._publish_one(event) for event in batch))
        for event, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Confirmed):
                result.published.append(event.id)
                result.confirmed[event.id] = outcome
            elif outcome[0] == "refused":
                result.refused[event.id] = outcome[1]
            else:
                result.broker_error = outcome[1]
        if result.published:
            try:
                vanished = await self._redeclare_missing_queues()
            except BROKER_UNAVAILABLE as err:  # not known to have reached every queue: publish it again
                vanished = [f"not checked ({_describe(err)})"]
            if vanished:
                result.broker_error = f"queue(s) vanished during the batch, publishing it again: {vanished}"
                result.published.clear()
                result.confirmed.clear()
        return result

    async def _redeclare_missing_queues(self) -> list[str]:
        """Declare again (with their bindings) the registered reactors' queues that do not exist; their
        names. Raises `BROKER_UNAVAILABLE` errors."""
        if not self._subscriptions:
            return []
        timeout = self._settings.broker_call_timeout_seconds
        by_queue = {
            self._topology.queue(subscription.reactor): subscription for subscription in self._subscriptions
        }
        missing = await missing_queues(self._publisher.side_channel, by_queue, timeout)
        if missing:
            channel = await self._publisher.channel()
            for name in missing:
                subscription = by_queue[name]
                log.warning("queue %s is missing (deleted?): declaring it again with its bindings", name)
                metrics().relay_queues_redeclared.labels(subscription.reactor).inc()
                await declare_subscription(channel, self._topology, subscription, timeout)
        return missing

    async def _publish_one(self, event: PendingEvent) -> tuple[str, str] | Confirmed:
        """The confirmed publish, or why the row was not published ("refused" or "broker", and the error)."""
        measured = metrics()
        # A producer span in the trace of the step that wrote the event; its context travels in the headers.
        with (
            log_context(order_id=event.subject or None, event_id=event.id),
            tracing.continue_trace(
                f"publish {event.routing_key}",
                parent=tracing.context_from({tracing.TRACEPARENT: event.traceparent or ""}),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self._topology.exchange,
                    "messaging.rabbitmq.destination.routing_key": event.routing_key,
                    "messaging.message.id": event.id,
                    "order.id": event.subject,
                },
            ) as span,
        ):
            sent_at, started = utcnow(), loop_time()
            try:
                await self._publisher.publish(
                    exchange=self._topology.exchange,
                    routing_key=event.routing_key,
                    body=json.dumps(event.envelope, separators=(",", ":")).encode(),
                    message_id=event.id,
                    message_type=event.event_type,
                    content_type=STRUCTURED_CONTENT_TYPE,
                    timestamp=event.created_at,
                    headers=tracing.propagation_headers(),
                )
            except DeliveryError as err:  # returned as unroutable (PublishError) or nacked
                measured.outbox_publish_failures.labels("refused").inc()
                span.set_attribute("error.type", "refused")
                return ("refused", _describe(err))
            except BROKER_UNAVAILABLE as err:
                measured.outbox_publish_failures.labels("broker").inc()
                span.set_attribute("error.type", "broker")
                return ("broker", _describe(err))
            confirmed = Confirmed(sent_at, (loop_time() - started) * 1000)
            measured.publish_confirm_latency.observe(confirmed.confirm_ms / 1000)
            measured.outbox_published.inc()
            if self._after_confirm is not None:
                await self._after_confirm(event.id)
            return confirmed

    async def _record(self, session: AsyncSession, batch: list[PendingEvent], result: BatchResult) -> None:
        now = utcnow()
        if result.published:
            # One statement, executed per row (executemany): each row keeps its own send time and confirm
            # latency (a consumer may get the message before the publisher gets the confirm).
            table = OutboxEvent.__table__
            assert isinstance(table, Table)
            await session.execute(
                update(table)
                .where(table.c.id == bindparam("row_id"))
                .values(
                    status=PUBLISHED,
                    published_at=bindparam("sent_at"),
                    last_attempt_at=bindparam("sent_at"),
                    confirm_ms=bindparam("confirm_ms"),
                    attempts=table.c.attempts + 1,
                ),
                [
                    {
                        "row_id": row_id,
                        "sent_at": result.confirmed[row_id].sent_at,
                        "confirm_ms": result.confirmed[row_id].confirm_ms,
                    }
                    for row_id in result.published
                ],
            )
        attempts = {event.id: event.attempts for event in batch}
        for event_id, error in result.refused.items():
            delay = min(0.5 * 2 ** attempts[event_id], ROW_RETRY_MAX_SECONDS)
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == event_id)
                .values(
                    attempts=OutboxEvent.attempts + 1,
                    last_error=error[:MAX_ERROR_LENGTH],
                    last_attempt_at=now,
                    available_at=now + timedelta(seconds=delay),
                )
            )
        unsent = [
            event.id for event in batch if event.id not in result.published and event.id not in result.refused
        ]
        if unsent and result.broker_error is not None:
            # The broker, not the row, is the problem: no per-row backoff; the relay itself backs off.
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(unsent))
                .values(
                    attempts=OutboxEvent.attempts + 1,
                    last_error=("broker unavailable: " + result.broker_error)[:MAX_ERROR_LENGTH],
                    last_attempt_at=now,
                )
            )

    async def _ensure_topology(self) -> None:
        channel = await self._publisher.channel()
        if self._declared_generation != self._publisher.generation:
            await declare_topology(
                channel, self._topology, self._subscriptions, self._settings.broker_call_timeout_seconds
            )
            self._declared_generation = self._publisher.generation

    async def _ensure_listener(self) -> None:
        if self._settings.is_sqlite or (self._listener is not None and not self._listener.is_closed()):
            return
        try:
            dsn = make_url(self._settings.database_url).set(drivername="postgresql")
            self._listener = await asyncpg.connect(
                dsn.render_as_string(hide_password=False), timeout=self._settings.broker_call_timeout_seconds
            )
            await self._listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
        except (OSError, TimeoutError, asyncpg.PostgresError) as err:
            log.warning("cannot LISTEN for outbox notifications (polling meanwhile): %s", err)
            self._listener = None

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, max_wait: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=max_wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def loop_time() -> float:
    return asyncio.get_running_loop().time()
