"""The outbox table: events written in the same transaction as the state change that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from infra.models import Base, utcnow

PENDING = "pending"
PUBLISHED = "published"


class OutboxEvent(Base):
    """One event to publish; `attempts`, `last_error` and the timestamps are its publish history."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        # The relay's scan: pending rows that are due, oldest first.
        Index("ix_outbox_events_status_available", "status", "available_at"),
        Index("ix_outbox_events_subject", "subject"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the CloudEvents id (deterministic)
    event_type: Mapped[str] = mapped_column(String(100))
    routing_key: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(64))  # the order id
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole CloudEvent, as published
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Not tried again before this (a row the broker refused backs off; a new row is due at once).
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    # When the relay sent it (the broker confirmed it `confirm_ms` later).
    published_at: Mapped[datetime | None] = mapped_column()
    confirm_ms: Mapped[float | None] = mapped_column(Float)
    # W3C trace context of the step that wrote the event; the relay continues that trace when publishing.
    traceparent: Mapped[str | None] = mapped_column(String(55))
