"""Loyalty points: an append-only ledger and the balance it adds up to, per customer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from infra.models import Base, utcnow


class LoyaltyLedgerEntry(Base):
    __tablename__ = "loyalty_ledger"
    __table_args__ = (Index("ix_loyalty_ledger_customer", "customer_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # one entry per event, ever
    order_id: Mapped[str] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoyaltyBalance(Base):
    __tablename__ = "loyalty_balances"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
