"""What the outbox holds: counts by status, the age of the oldest pending event, failing events."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from infra.models import utcnow
from messaging.models import PENDING, OutboxEvent

FAILING_SHOWN = 10


@dataclass(frozen=True)
class FailingEvent:
    event_id: str
    attempts: int
    last_error: str


@dataclass(frozen=True)
class OutboxStatus:
    counts: dict[str, int]
    oldest_pending_age_seconds: float | None
    failing: list[FailingEvent]


async def outbox_status(session: AsyncSession) -> OutboxStatus:
    by_status = await session.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status))
    counts = {status: count for status, count in by_status.all()}
    oldest = await session.scalar(
        select(func.min(OutboxEvent.created_at)).where(OutboxEvent.status == PENDING)
    )
    failing = (
        await session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.status == PENDING, OutboxEvent.last_error.is_not(None))
            .order_by(OutboxEvent.created_at)
            .limit(FAILING_SHOWN)
        )
    ).all()
    # min() keeps the column's type (UTCDateTime): an aware datetime on both backends.
    age = None if oldest is None else (utcnow() - oldest).total_seconds()
    return OutboxStatus(
        counts=counts,
        oldest_pending_age_seconds=age,
        failing=[FailingEvent(e.id, e.attempts, e.last_error or "") for e in failing],
    )
