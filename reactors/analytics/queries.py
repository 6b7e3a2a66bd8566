"""Read model of the analytics reactor, for `GET /analytics/sales?date=`."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from reactors.analytics.models import DailyOrderCounts, DailySkuSales


class SkuSales(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    currency: str
    units: int
    revenue: int  # minor units of `currency`


class DailySales(BaseModel):
    model_config = ConfigDict(frozen=True)

    date: date
    orders_shipped: int
    orders_cancelled: int
    skus: list[SkuSales]


async def sales_on(session: AsyncSession, day: date) -> DailySales:
    """`sales_on(session: AsyncSession, day: date) -> DailySales`

    Sales of one UTC day: per SKU and currency the units shipped and the revenue (integer minor units),
    sorted by SKU, plus the day's counts of orders shipped and cancelled (cancelled counts every order the
    saga closed as CANCELLED or FAILED). A day without sales gives zeros and an empty list, never an error.
    Read-only; the caller owns the session.
    """
    counts = await session.get(DailyOrderCounts, day)
    rows = (
        await session.scalars(
            select(DailySkuSales)
            .where(DailySkuSales.day == day)
            .order_by(DailySkuSales.sku, DailySkuSales.currency)
        )
    ).all()
    return DailySales(
        date=day,
        orders_shipped=counts.orders_shipped if counts else 0,
        orders_cancelled=counts.orders_cancelled if counts else 0,
        skus=[
            SkuSales(sku=row.sku, currency=row.currency, units=row.units, revenue=row.revenue) for row in rows
        ],
    )
