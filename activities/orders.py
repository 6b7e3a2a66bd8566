"""Order status steps. Cheap database writes, run as local activities by the workflow."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from temporalio import activity

from activities.inventory import consume_reservations
from activities.messages import OrderClosure, OrderRef, StatusChange, StepOutcome
from domain.model import OrderStatus
from infra import models
from infra.db import engine_of, transaction
from infra.orders import lock_order, lock_order_with_lines, transition
from messaging.order_events import ORDER_EVENT_COLUMNS, record_order_cancelled, record_order_shipped
from observability.metrics import saga_ended


class OrderActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._engine = engine_of(session_factory)

    @activity.defn
    async def mark_order_shipped(self, order: OrderRef) -> StepOutcome:
        """The goods have left: reserved stock becomes shipped stock, and the order is SHIPPED."""
        outcome, placed_at = await transaction(self._engine, lambda conn: _mark_shipped(conn, order.order_id))
        if outcome.changed:  # counted once, after the commit; a re-run changes nothing
            saga_ended(placed_at, OrderStatus.SHIPPED)
        return outcome

    @activity.defn
    async def mark_order_status(self, change: StatusChange) -> StepOutcome:
        return await transaction(self._engine, lambda conn: _mark_status(conn, change))

    @activity.defn
    async def close_order(self, closure: OrderClosure) -> StepOutcome:
        outcome, placed_at = await transaction(self._engine, lambda conn: _close(conn, closure))
        if outcome.changed:
            saga_ended(placed_at, closure.status, closure.reason)
        return outcome


async def _mark_shipped(conn: AsyncConnection, order_id: str) -> tuple[StepOutcome, datetime]:
    record, lines = await lock_order_with_lines(
        conn,
        order_id,
        *ORDER_EVENT_COLUMNS,
        models.Order.created_at,
        models.Shipment.carrier,
        models.Shipment.tracking_number,
        outer_joins=[(models.Shipment, models.Shipment.order_id == models.Order.id)],
    )
    changed = await transition(conn, order_id, record.status, OrderStatus.SHIPPED)
    if changed:
        await consume_reservations(conn, order_id)
    # Same transaction as the status change; a re-run writes the same event id, a no-op.
    await record_order_shipped(conn, record, lines, record.carrier, record.tracking_number)
    return StepOutcome(order_id, changed=changed), record.created_at


async def _mark_status(conn: AsyncConnection, change: StatusChange) -> StepOutcome:
    record = await lock_order(conn, change.order_id)
    changed = await transition(conn, change.order_id, record.status, change.status, change.reason)
    return StepOutcome(change.order_id, changed=changed)


async def _close(conn: AsyncConnection, closure: OrderClosure) -> tuple[StepOutcome, datetime]:
    record = await lock_order(conn, closure.order_id, *ORDER_EVENT_COLUMNS, models.Order.created_at)
    changed = await transition(
        conn,
        closure.order_id,
        record.status,
        closure.status,
        closure.reason,
        failure_reason=closure.reason,
        failure_detail=closure.detail,
    )
    # Same transaction as the status change; a re-run writes the same event id, a no-op.
    await record_order_cancelled(
        conn,
        record,
        final_status=closure.status,
        reason=closure.reason,
        detail=closure.detail,
        compensations=closure.compensations,
    )
    return StepOutcome(closure.order_id, changed=changed), record.created_at
