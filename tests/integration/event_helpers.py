"""Publishing events directly (bypassing the saga) for the reactor tests, as the relay would, or straight into
a DLQ as the runtime would; recording them in the outbox as published; `tests.events` builds them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import update

from contracts.envelope import CloudEvent, encode_event
from infra.models import utcnow
from messaging.broker import ConfirmedPublisher
from messaging.headers import DeadLetterHeaders
from messaging.models import PUBLISHED, OutboxEvent
from messaging.outbox import add_to_outbox
from tests.integration.conftest import EventStack


async def publish(
    stack: EventStack,
    event: CloudEvent | None = None,
    *,
    body: bytes | None = None,
    routing_key: str | None = None,
    message_id: str | None = None,
    exchange: str | None = None,
    headers: dict[str, object] | None = None,
) -> None:
    """Publish like the relay does (persistent, confirmed, mandatory), or any raw body; `headers` as the
    relay sets them (e.g. `traceparent`)."""
    publisher = ConfirmedPublisher(stack.settings, "test-publisher")
    try:
        await publisher.publish(
            exchange=stack.topology.exchange if exchange is None else exchange,
            routing_key=routing_key or (event.type if event else "order.shipped.v1"),
            body=body if body is not None else encode_event(event) if event else b"",
            message_id=message_id or (event.id if event else str(uuid.uuid4())),
            message_type=event.type if event else None,
            headers=headers,
        )
    finally:
        await publisher.close()


async def dead_letter(
    events: EventStack, event: CloudEvent, reactor: str, reason: str, at: datetime | None = None
) -> None:
    """Put a copy of `event` in the reactor's DLQ the way the runtime does."""
    await publish(
        events,
        event,
        exchange="",
        routing_key=events.topology.dead_letter_queue(reactor),
        headers={
            DeadLetterHeaders.REACTOR: reactor,
            DeadLetterHeaders.REASON: reason,
            DeadLetterHeaders.ATTEMPTS: 3,
            DeadLetterHeaders.AT: (at or utcnow()).isoformat(),
            DeadLetterHeaders.EVENT_TYPE: event.type,
            DeadLetterHeaders.SUBJECT: event.subject,
        },
    )


async def in_outbox(events: EventStack, *recorded: CloudEvent) -> None:
    """Record the events in the outbox as published (as the relay would have left them)."""
    async with events.database.sessions() as session, session.begin():
        for event in recorded:
            await add_to_outbox(session, event)
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_([event.id for event in recorded]))
            .values(status=PUBLISHED, published_at=utcnow(), attempts=1)
        )
