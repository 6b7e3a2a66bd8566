"""What the reactors built from order events, read back: loyalty, sales analytics, notifications."""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.order_service import order_not_found
from api.schemas import OrderNotifications
from infra import models
from reactors.analytics.queries import DailySales, sales_on
from reactors.loyalty.queries import LoyaltyAccount, loyalty_account
from reactors.notification.queries import notifications_for_order


class ReadModels:
    """Eventually consistent: a reactor may not have seen an order's latest events yet."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def loyalty(self, customer_id: str, *, limit: int) -> LoyaltyAccount:
        async with self._sessions() as session:
            return await loyalty_account(session, customer_id, limit=limit)

    async def sales(self, day: date) -> DailySales:
        async with self._sessions() as session:
            return await sales_on(session, day)

    async def notifications(self, order_id: str) -> OrderNotifications:
        async with self._sessions() as session:
            if await session.scalar(select(models.Order.id).where(models.Order.id == order_id)) is None:
                raise order_not_found(order_id)
            items = await notifications_for_order(session, order_id)
        return OrderNotifications(order_id=uuid.UUID(order_id), items=items)
