"""Sales analytics: units and revenue per day and SKU, orders shipped and cancelled per day (UTC days)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Date, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from infra.models import Base


class DailySkuSales(Base):
    __tablename__ = "analytics_daily_sku_sales"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    units: Mapped[int] = mapped_column(BigInteger, default=0)
    revenue: Mapped[int] = mapped_column(BigInteger, default=0)  # minor units of `currency`


class DailyOrderCounts(Base):
    __tablename__ = "analytics_daily_orders"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    orders_shipped: Mapped[int] = mapped_column(Integer, default=0)
    orders_cancelled: Mapped[int] = mapped_column(Integer, default=0)
