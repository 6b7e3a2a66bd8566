"""Order records shared by the steps: lock an order, move its status with a history entry."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload, selectinload
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from domain.errors import DomainError
from domain.model import OrderStatus, check_transition
from infra import models


async def lock_order(session: AsyncSession, order_id: str, *, with_lines: bool = False) -> models.Order:
    """Load the order and lock its row (PostgreSQL), serializing steps of the same order.

    On SQLite every transaction already holds the write lock (BEGIN IMMEDIATE). The lines cost a second
    query, so only the steps that need them ask for them; touching them otherwise raises.
    """
    lines = selectinload(models.Order.lines) if with_lines else raiseload(models.Order.lines)
    order = await session.scalar(
        select(models.Order).where(models.Order.id == order_id).options(lines).with_for_update()
    )
    if order is None:
        raise ApplicationError(f"order {order_id} does not exist", type="OrderNotFound")
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


def business_failure(error: DomainError) -> ApplicationError:
    """A business failure as Temporal sees it: typed by its code and never retried. Benign: an expected
    outcome (a declined card) is logged at DEBUG, not as a worker error with a traceback."""
    return ApplicationError(
        str(error), type=error.code, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )
