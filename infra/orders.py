"""The one module that owns order rows: create an order (priced from the catalogue), lock it for a step,
move its status with a history entry. The API, the activities and the tools all go through here."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import raiseload, selectinload

from domain.model import Money, OrderStatus, PlaceOrder, check_transition, price_order, workflow_id_for
from infra import models


class OrderNotFound(LookupError):
    """No order row with that id. In an activity it is a retryable failure of type `OrderNotFound`."""


async def create_order(
    session_factory: async_sessionmaker[AsyncSession], command: PlaceOrder
) -> Money | None:
    """Write the order in PLACED state with its lines, priced from the catalogue, in one transaction.

    Returns the order's total, or None when an order with this id already exists (nothing is written then).
    Raises UnknownProduct / InvalidOrder before anything is written.
    """
    try:
        async with session_factory() as session, session.begin():
            if await session.get(models.Order, command.order_id) is not None:
                return None
            order, placed = await _priced_order_rows(session, command)
            session.add_all([order, placed])
    except IntegrityError:
        # A concurrent placement of the same order won the race; its row is the order.
        async with session_factory() as session:
            if await session.get(models.Order, command.order_id) is not None:
                return None
        raise
    return Money(order.total_amount, order.currency)


async def _priced_order_rows(
    session: AsyncSession, command: PlaceOrder
) -> tuple[models.Order, models.OrderStatusChange]:
    skus = [item.sku for item in command.items]
    products = (await session.scalars(select(models.Product).where(models.Product.sku.in_(skus)))).all()
    prices = {p.sku: Money(p.unit_price, p.currency) for p in products}
    lines, total = price_order(command.items, prices)
    order = models.Order(
        id=command.order_id,
        workflow_id=workflow_id_for(command.order_id),
        customer_id=command.customer_id,
        customer_email=command.customer_email,
        currency=total.currency,
        total_amount=total.amount,
        payment_token=command.payment_token,
        shipping_address=asdict(command.shipping_address),
        status=OrderStatus.PLACED,
        lines=[
            models.OrderLine(
                line_no=number,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=line.unit_price.amount,
                line_total=line.total.amount,
            )
            for number, line in enumerate(lines, start=1)
        ],
    )
    return order, models.OrderStatusChange(order_id=order.id, status=OrderStatus.PLACED)


async def lock_order(session: AsyncSession, order_id: str, *, with_lines: bool = False) -> models.Order:
    """Load the order and lock its row (PostgreSQL), serializing steps of the same order.

    On SQLite every transaction already holds the write lock (BEGIN IMMEDIATE). The lines cost a second
    query, so only the steps that need them ask for them; touching them otherwise raises.
    Raises OrderNotFound.
    """
    lines = selectinload(models.Order.lines) if with_lines else raiseload(models.Order.lines)
    order = await session.scalar(
        select(models.Order).where(models.Order.id == order_id).options(lines).with_for_update()
    )
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order


def transition(
    session: AsyncSession,
    order: models.Order,
    target: OrderStatus,
    reason: str | None = None,
) -> bool:
    """Move the order to `target` and record it; False (and nothing written) if it is there already."""
    if not check_transition(OrderStatus(order.status), target):
        return False
    order.status = target
    session.add(models.OrderStatusChange(order_id=order.id, status=target, reason=reason))
    return True
