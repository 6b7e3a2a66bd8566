"""Spans and metrics of a reactor's messages.

Each message has a consumer span continuing the `traceparent` header the relay set (a root when there is
none). A batch of one makes its message's span current, so the reactor's SQL goes under it; a larger batch
puts its shared statements under a batch span, a root linked to each message's span (one statement serves
messages of several traces). Counts: `reactor_messages` and `reactor_handling_seconds` by outcome,
`reactor_event_age_seconds` by event type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind

from contracts.envelope import ReceivedEvent
from observability import tracing
from observability.logs import log_context
from observability.metrics import metrics
from reactors.models import DeliveryOutcome
from reactors.runtime.persistence import Delivery

# Outcome label of the reactor_messages metric, by ledger outcome.
METRIC_OUTCOMES = {
    DeliveryOutcome.PROCESSED: "processed",
    DeliveryOutcome.DUPLICATE_IGNORED: "duplicate",
    DeliveryOutcome.RETRY_SCHEDULED: "retry",
    DeliveryOutcome.DEAD_LETTERED: "dead",
}


class Observer:
    """Spans and counts of one reactor consuming `queue`."""

    def __init__(self, reactor: str, queue: str) -> None:
        self._reactor = reactor
        self._queue = queue

    def consumer_span(self, message: AbstractIncomingMessage) -> trace.Span:
        """The message's consumer span, continuing the publisher's trace (started, not made current). With
        tracing off, the publisher's span context itself, so that its trace id still reaches the logs and
        the ledger."""
        return tracing.tracer(tracing.INSTRUMENTATION_NAME).start_span(
            f"{self._reactor} process {message.type or 'message'}",
            context=tracing.context_from(message.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self._queue,
                "messaging.message.id": message.message_id or "",
                "messaging.consumer.group.name": self._reactor,
            },
        )

    @contextlib.contextmanager
    def work_of(self, deliveries: Sequence[Delivery]) -> Iterator[None]:
        """Where the batch's shared work (its SQL) is traced and logged: under the message's span and with
        its ids for a batch of one; under a batch span for more."""
        if len(deliveries) == 1:
            [delivery] = deliveries
            with (
                trace.use_span(delivery.span, end_on_exit=False),
                log_context(event_id=delivery.event.id, order_id=delivery.event.subject),
            ):
                yield
            return
        with tracing.tracer(tracing.INSTRUMENTATION_NAME).start_as_current_span(
            f"{self._reactor} process batch",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=[Link(delivery.span.get_span_context()) for delivery in deliveries],
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self._queue,
                "messaging.batch.message_count": len(deliveries),
                "messaging.consumer.group.name": self._reactor,
            },
        ):
            yield

    def count(self, outcome: str, started: float) -> None:
        """Count one settled message and its handling time since `started` (loop time, seconds)."""
        label = METRIC_OUTCOMES[outcome]
        measured = metrics()
        measured.reactor_messages.labels(self._reactor, label).inc()
        measured.reactor_handling.labels(self._reactor, label).observe(
            asyncio.get_running_loop().time() - started
        )

    def age(self, event: ReceivedEvent, received_at: datetime) -> None:
        metrics().reactor_event_age.labels(self._reactor, event.type).observe(
            max((received_at - event.envelope.time).total_seconds(), 0.0)
        )
