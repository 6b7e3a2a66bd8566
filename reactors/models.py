"""Tables of the reactor runtime: the inbox (deduplication) and the delivery ledger (what happened when)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Index, Integer, String, Text
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
    # Published again from the outbox to this reactor by an operator's replay (reactors.replay).
    REPLAYED = "replayed"


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


class ReplayMode:
    BACKFILL = "backfill"  # through the inbox: events the reactor applied already are skipped
    REAPPLY = "reapply"  # past the inbox, for exactly the replayed events, after their effects are reset

    @staticmethod
    def label(mode: str) -> str:
        """How the ledger and the operator read it."""
        return "re-apply" if mode == ReplayMode.REAPPLY else "backfill"


class ReplayOutcome:
    """What became of one event of a replay (`ReplayItem.outcome`)."""

    APPLIED = "applied"  # its effects made by the replay (re-applied, or applied for the first time)
    SKIPPED = "skipped"  # a backfill of an event the reactor had applied already
    MISSING = "missing"  # its outbox row was deleted (retention) before it could be published


class EventReplay(Base):
    """One replay of outbox events to one reactor (`reactors.replay`): who asked for what, and how far the
    publishing got (`state`: publishing, published, failed with `last_error`)."""

    __tablename__ = "event_replays"
    __table_args__ = (Index("ix_event_replays_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    selection: Mapped[str] = mapped_column(Text)  # what the operator chose, as they would read it
    requested_by: Mapped[str] = mapped_column(String(100))
    total: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReplayItem(Base):
    """One event of a replay. For a re-apply, the row is also the grant the runtime claims (`settled_at`
    set, in the transaction of the effects) to apply that event once more past its inbox; a second copy
    of the message finds it claimed and is a duplicate."""

    __tablename__ = "event_replay_items"
    __table_args__ = (Index("ix_event_replay_items_created_at", "created_at"),)

    replay_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(100))
    reapply: Mapped[bool] = mapped_column(Boolean)
    published_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(16))  # a ReplayOutcome
    settled_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
