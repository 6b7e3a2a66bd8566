"""Inventory steps: reserve stock atomically (never oversell), release it (idempotent)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.steps import compensation
from domain.errors import OutOfStock
from domain.model import OrderStatus
from infra import models
from infra.db import rowcount
from infra.orders import lock_order, transition

RESERVED = "reserved"
RELEASED = "released"
CONSUMED = "consumed"


class InventoryActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = session_factory

    @activity.defn
    async def reserve_inventory(self, order: OrderRef) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, order.order_id, with_lines=True)
            existing = await session.scalar(
                select(models.Reservation.id).where(models.Reservation.order_id == record.id)
            )
            if existing is not None:
                return StepOutcome(order.order_id, changed=False, detail="already reserved")
            # One conditional update per SKU, in SKU order so concurrent orders cannot deadlock:
            # the row changes only while enough stock is available, so stock never oversells.
            for line in sorted(record.lines, key=lambda line: line.sku):
                result = await session.execute(
                    update(models.Product)
                    .where(
                        models.Product.sku == line.sku,
                        models.Product.on_hand - models.Product.reserved >= line.quantity,
                    )
                    .values(reserved=models.Product.reserved + line.quantity)
                )
                if rowcount(result) != 1:
                    # Leaving the transaction through the exception rolls back earlier SKUs.
                    raise business_failure(OutOfStock(line.sku, line.quantity))
                session.add(
                    models.Reservation(
                        order_id=record.id, sku=line.sku, quantity=line.quantity, status=RESERVED
                    )
                )
            transition(session, record, OrderStatus.INVENTORY_RESERVED)
        return StepOutcome(order.order_id, changed=True, detail="reserved")

    @compensation
    @activity.defn
    async def release_inventory(self, order: OrderRef) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            await lock_order(session, order.order_id)
            reservations = (
                await session.scalars(
                    select(models.Reservation).where(
                        models.Reservation.order_id == order.order_id,
                        models.Reservation.status == RESERVED,
                    )
                )
            ).all()
            for reservation in sorted(reservations, key=lambda r: r.sku):
                await session.execute(
                    update(models.Product)
                    .where(models.Product.sku == reservation.sku)
                    .values(reserved=models.Product.reserved - reservation.quantity)
                )
                reservation.status = RELEASED
        return StepOutcome(order.order_id, changed=bool(reservations), detail=f"released {len(reservations)}")


async def consume_reservations(session: AsyncSession, order_id: str) -> None:
    """Turn an order's reservations into shipped stock (on hand and reserved both go down)."""
    reservations = (
        await session.scalars(
            select(models.Reservation).where(
                models.Reservation.order_id == order_id, models.Reservation.status == RESERVED
            )
        )
    ).all()
    for reservation in sorted(reservations, key=lambda r: r.sku):
        await session.execute(
            update(models.Product)
            .where(models.Product.sku == reservation.sku)
            .values(
                on_hand=models.Product.on_hand - reservation.quantity,
                reserved=models.Product.reserved - reservation.quantity,
            )
        )
        reservation.status = CONSUMED
