"""Read model of the loyalty reactor, for `GET /customers/{id}/loyalty`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry


class LoyaltyEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    points: int
    reason: str
    created_at: datetime


class LoyaltyAccount(BaseModel):
    model_config = ConfigDict(frozen=True)

    customer_id: str
    points: int
    entries: list[LoyaltyEntry]  # newest first


async def loyalty_account(session: AsyncSession, customer_id: str, *, limit: int = 50) -> LoyaltyAccount:
    """`loyalty_account(session: AsyncSession, customer_id: str, *, limit: int = 50) -> LoyaltyAccount`

    The customer's points balance and their latest `limit` ledger entries, newest first. A customer with
    no points yet gets a balance of 0 and no entries (not an error: the reactor may simply not have caught
    up). Read-only; the caller owns the session.
    """
    balance = await session.get(LoyaltyBalance, customer_id)
    entries = (
        await session.scalars(
            select(LoyaltyLedgerEntry)
            .where(LoyaltyLedgerEntry.customer_id == customer_id)
            .order_by(LoyaltyLedgerEntry.id.desc())
            .limit(limit)
        )
    ).all()
    return LoyaltyAccount(
        customer_id=customer_id,
        points=balance.points if balance else 0,
        entries=[
            LoyaltyEntry(order_id=e.order_id, points=e.points, reason=e.reason, created_at=e.created_at)
            for e in entries
        ],
    )
