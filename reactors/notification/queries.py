"""Read model of the notification reactor, for `GET /orders/{id}/notifications`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from reactors.notification.models import Notification


class NotificationView(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    event_type: str
    recipient: str
    subject: str
    body: str
    message_id: str
    status: str  # sending | retrying | sent | failed (see reactors.notification.models)
    send_attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None = None  # why the last send failed (retrying, failed)


async def notifications_for_order(session: AsyncSession, order_id: str) -> list[NotificationView]:
    """`notifications_for_order(session: AsyncSession, order_id: str) -> list[NotificationView]`

    Every notification of one order, oldest first: at most one per event (shipped, cancelled). An unknown
    order, or one whose events were not processed yet, gives an empty list (the caller decides whether that
    is a 404). Read-only; the caller owns the session.
    """
    rows = (
        await session.scalars(
            select(Notification).where(Notification.order_id == order_id).order_by(Notification.created_at)
        )
    ).all()
    return [NotificationView.model_validate(row, from_attributes=True) for row in rows]
