"""Writing to the outbox, inside the caller's transaction."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent
from infra.models import utcnow
from messaging.models import PENDING, OutboxEvent
from observability.tracing import current_traceparent

# PostgreSQL channel the relay LISTENs on; NOTIFY is delivered when the writing transaction commits.
OUTBOX_CHANNEL = "outbox_events"


async def add_to_outbox(session: AsyncSession, event: CloudEvent) -> None:
    """Queue `event` for publishing as part of the session's open transaction.

    The id is deterministic, so writing the same event again (a retried step) is a no-op. The current trace
    context (the step's span, when tracing is on) goes with the row, for the relay to continue.
    """
    dialect = session.get_bind().dialect.name
    now = utcnow()
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(OutboxEvent)
        .values(
            id=event.id,
            event_type=event.type,
            routing_key=event.type,
            subject=event.subject,
            envelope=event.model_dump(mode="json"),
            status=PENDING,
            attempts=0,
            created_at=now,
            available_at=now,
            traceparent=current_traceparent(),
        )
        .on_conflict_do_nothing(index_elements=[OutboxEvent.id])
    )
    await session.execute(statement)
    if dialect == "postgresql":
        # Wakes the relay the moment this transaction commits (and not at all if it rolls back).
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": OUTBOX_CHANNEL})
