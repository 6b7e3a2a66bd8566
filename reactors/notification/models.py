"""The notifications sent (or being sent, or that failed) to customers, one per event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from infra.models import Base, utcnow

SENDING = "sending"  # claimed by a notifier, being sent
RETRYING = "retrying"  # the last send failed transiently (last_error); the event is retried
SENT = "sent"
FAILED = "failed"  # dead-lettered: a permanent failure, or the attempts ran out (last_error says which)


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_order_created", "order_id", "created_at"),
        Index("ix_notifications_sent_at", "sent_at"),  # the retention's scan (infra/retention.py)
    )

    # One notification per event: the event id is the key that stops a second mail.
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    order_id: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(200))  # the RFC 5322 Message-ID, derived from event_id
    status: Mapped[str] = mapped_column(String(16))  # sending | retrying | sent | failed
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
