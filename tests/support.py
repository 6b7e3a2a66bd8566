"""Helpers for tests: real databases migrated by Alembic, the offline Temporal binaries, seeding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.model import PlaceOrder, RequestedItem, ShippingAddress
from infra import models
from infra.db import Database, open_database
from infra.settings import Settings, load_settings
from ops.provisioning import ROOT, alembic_config, empty_database, executable, free_port, migrate

# The launcher's helpers, shared with the tools (bench/) that may not import tests.
__all__ = ["ROOT", "alembic_config", "empty_database", "executable", "free_port", "migrate"]


async def downgrade(database_url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), revision)


@asynccontextmanager
async def migrated_database(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, Database]]:
    async with empty_database(backend, tmp_path) as url:
        await migrate(url)
        settings = load_settings(database_url=url, env="test")
        database = open_database(settings)
        try:
            yield settings, database
        finally:
            await database.dispose()


async def add_product(
    sessions: async_sessionmaker[AsyncSession],
    sku: str,
    on_hand: int,
    unit_price: int = 1_250,
    currency: str = "EUR",
) -> None:
    async with sessions() as session, session.begin():
        session.add(
            models.Product(
                sku=sku, name=f"Product {sku}", unit_price=unit_price, currency=currency, on_hand=on_hand
            )
        )


def order_command(
    *,
    items: dict[str, int],
    token: str = "tok_ok",
    country: str = "DE",
    customer_id: str = "cust-1",
    order_id: str | None = None,
) -> PlaceOrder:
    return PlaceOrder(
        order_id=order_id or str(uuid.uuid4()),
        customer_id=customer_id,
        customer_email=f"{customer_id}@example.com",
        items=tuple(RequestedItem(sku, quantity) for sku, quantity in items.items()),
        payment_token=token,
        shipping_address=ShippingAddress(
            name="Ada Lovelace", line1="1 Analytical Way", city="Berlin", postal_code="10115", country=country
        ),
    )


async def product(sessions: async_sessionmaker[AsyncSession], sku: str) -> models.Product:
    async with sessions() as session:
        found = await session.get(models.Product, sku)
        assert found is not None
        return found


async def order_snapshot(sessions: async_sessionmaker[AsyncSession], order_id: str) -> dict[str, object]:
    """Everything the database says about one order, in plain data for assertions."""
    async with sessions() as session:
        order = await session.get(models.Order, order_id)
        assert order is not None
        history = (
            await session.scalars(
                select(models.OrderStatusChange.status)
                .where(models.OrderStatusChange.order_id == order_id)
                .order_by(models.OrderStatusChange.id)
            )
        ).all()
        reservations = (
            await session.scalars(select(models.Reservation).where(models.Reservation.order_id == order_id))
        ).all()
        payments = (
            await session.scalars(select(models.Payment).where(models.Payment.order_id == order_id))
        ).all()
        shipments = (
            await session.scalars(select(models.Shipment).where(models.Shipment.order_id == order_id))
        ).all()
        return {
            "status": order.status,
            "failure_reason": order.failure_reason,
            "history": list(history),
            "reservations": sorted((r.sku, r.quantity, r.status) for r in reservations),
            "payments": sorted((p.kind, p.amount, p.status) for p in payments),
            "shipments": [(s.status, s.tracking_number) for s in shipments],
        }
