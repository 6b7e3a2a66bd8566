"""Writing to the outbox, inside the caller's transaction."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from contracts.envelope import CloudEvent
from infra.models import utcnow
from messaging.models import PENDING, OutboxEvent
from observability.tracing import current_traceparent

# PostgreSQL channel the relay LISTENs on; NOTIFY is delivered when the writing transaction commits.
OUTBOX_CHANNEL = "outbox_events"


async def add_to_outbox(executor: AsyncSession | AsyncConnection, event: CloudEvent) -> None:
    """Queue `event` for publishing as part of the open transaction of `executor` (one statement).

    The id is deterministic, so writing the same event again (a retried step) is a no-op. The current trace
    context (the step's span, when tracing is on) goes with the row, for the relay to continue.
    """
    bind = executor.get_bind() if isinstance(executor, AsyncSession) else executor
    dialect = bind.dialect.name
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
    if dialect == "postgresql":
        # Wakes the relay the moment this transaction commits (and not at all if it rolls back). In the
        # insert's RETURNING, so it costs no round trip, and a duplicate (no row) notifies nobody.
        await executor.execute(statement.returning(func.pg_notify(OUTBOX_CHANNEL, "")))
    else:
        await executor.execute(statement)
