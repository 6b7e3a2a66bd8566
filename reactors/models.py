"""Tables of the reactor runtime: the inbox (deduplication) and the delivery ledger (what happened when)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from infra.models import Base, utcnow


class InboxMessage(Base):
    """A message a reactor has applied. Inserted in the same transaction as the reactor's effects."""

    __tablename__ = "inbox_messages"
    # The retention's scan (infra/retention.py).
    __table_args__ = (Index("ix_inbox_messages_processed_at", "processed_at"),)

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str | None] = mapped_column(String(64))
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryOutcome:
    RECEIVED = "received"
    PROCESSED = "processed"
    DUPLICATE_IGNORED = "duplicate_ignored"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    REDRIVEN = "redriven"
    # Re-driven from the outbox: a retry the broker lost between its wait queue and the reactor's queue.
    RETRY_RECOVERED = "retry_recovered"


class DeliveryRecord(Base):
    """One step in the life of one delivery to one reactor; `subject` (the order id) links it to an order."""

    __tablename__ = "reactor_deliveries"
    __table_args__ = (
        Index("ix_reactor_deliveries_subject", "subject", "id"),
        Index("ix_reactor_deliveries_consumer_message", "consumer", "message_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str | None] = mapped_column(String(100))
    subject: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # On an outcome row: how long the delivery took from receipt to this outcome.
    duration_ms: Mapped[float | None] = mapped_column(Float)
    # The trace the delivery belongs to (from its `traceparent` header), to find it in a tracing backend.
    trace_id: Mapped[str | None] = mapped_column(String(32))
