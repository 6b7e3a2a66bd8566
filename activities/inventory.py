"""Inventory steps: reserve stock atomically (never oversell), release it (idempotent)."""

from __future__ import annotations

from sqlalchemy import exists, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from temporalio import activity

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.steps import compensation
from domain.errors import OutOfStock
from domain.model import OrderStatus
from infra import models
from infra.db import engine_of, rowcount, transaction
from infra.orders import lock_order, lock_order_with_lines, transition

RESERVED = "reserved"
RELEASED = "released"
CONSUMED = "consumed"


class InventoryActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._engine = engine_of(session_factory)

    @activity.defn
    async def reserve_inventory(self, order: OrderRef) -> StepOutcome:
        return await transaction(self._engine, lambda conn: _reserve(conn, order.order_id))

    @compensation
    @activity.defn
    async def release_inventory(self, order: OrderRef) -> StepOutcome:
        return await transaction(self._engine, lambda conn: _release(conn, order.order_id))


async def _reserve(conn: AsyncConnection, order_id: str) -> StepOutcome:
    reserved = exists().where(models.Reservation.order_id == order_id).label("reserved")
    record, lines = await lock_order_with_lines(conn, order_id, reserved)
    # `reserved` may miss a duplicate attempt that committed while the lock waited (`lock_order`): then
    # the reservation rows' unique key rolls this one back, stock updates included, and it is retried.
    if record.reserved:
        return StepOutcome(order_id, changed=False, detail="already reserved")
    lines.sort(key=lambda line: line.sku)
    # One conditional update per SKU, in SKU order so concurrent orders cannot deadlock:
    # the row changes only while enough stock is available, so stock never oversells.
    for line in lines:
        result = await conn.execute(
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
    await conn.execute(
        insert(models.Reservation),
        [
            {"order_id": order_id, "sku": line.sku, "quantity": line.quantity, "status": RESERVED}
            for line in lines
        ],
    )
    await transition(conn, order_id, record.status, OrderStatus.INVENTORY_RESERVED)
    return StepOutcome(order_id, changed=True, detail="reserved")


async def _release(conn: AsyncConnection, order_id: str) -> StepOutcome:
    await lock_order(conn, order_id)
    released = await _settle_reservations(conn, order_id, RELEASED)
    for sku, quantity in released:
        await conn.execute(
            update(models.Product)
            .where(models.Product.sku == sku)
            .values(reserved=models.Product.reserved - quantity)
        )
    return StepOutcome(order_id, changed=bool(released), detail=f"released {len(released)}")


async def consume_reservations(conn: AsyncConnection, order_id: str) -> None:
    """Turn an order's reservations into shipped stock (on hand and reserved both go down)."""
    for sku, quantity in await _settle_reservations(conn, order_id, CONSUMED):
        await conn.execute(
            update(models.Product)
            .where(models.Product.sku == sku)
            .values(
                on_hand=models.Product.on_hand - quantity,
                reserved=models.Product.reserved - quantity,
            )
        )


async def _settle_reservations(conn: AsyncConnection, order_id: str, status: str) -> list[tuple[str, int]]:
    """Move the order's held reservations to `status`; their (sku, quantity), in SKU order for the stock
    updates that follow (the order's lock already serializes its own reservation rows)."""
    result = await conn.execute(
        update(models.Reservation)
        .where(models.Reservation.order_id == order_id, models.Reservation.status == RESERVED)
        .values(status=status)
        .returning(models.Reservation.sku, models.Reservation.quantity)
    )
    return sorted((sku, quantity) for sku, quantity in result)
