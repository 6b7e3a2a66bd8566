"""Order status steps. Cheap database writes, run as local activities by the workflow."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.inventory import consume_reservations
from activities.messages import OrderClosure, OrderRef, StatusChange, StepOutcome
from domain.model import OrderStatus
from infra.orders import lock_order, transition
from messaging.order_events import record_order_cancelled, record_order_shipped
from observability.metrics import saga_ended


class OrderActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = session_factory

    @activity.defn
    async def mark_order_shipped(self, order: OrderRef) -> StepOutcome:
        """The goods have left: reserved stock becomes shipped stock, and the order is SHIPPED."""
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, order.order_id, with_lines=True)
            changed = transition(session, record, OrderStatus.SHIPPED)
            if changed:
                await consume_reservations(session, record.id)
            # Same transaction as the status change; a re-run writes the same event id, a no-op.
            await record_order_shipped(session, record)
        if changed:  # counted once, after the commit; a re-run changes nothing
            saga_ended(record.created_at, OrderStatus.SHIPPED)
        return StepOutcome(order.order_id, changed=changed)

    @activity.defn
    async def mark_order_status(self, change: StatusChange) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, change.order_id)
            changed = transition(session, record, change.status, change.reason)
        return StepOutcome(change.order_id, changed=changed)

    @activity.defn
    async def close_order(self, closure: OrderClosure) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, closure.order_id)
            changed = transition(session, record, closure.status, closure.reason)
            if changed:
                record.failure_reason = closure.reason
                record.failure_detail = closure.detail
            # Same transaction as the status change; a re-run writes the same event id, a no-op.
            await record_order_cancelled(
                session,
                record,
                final_status=closure.status,
                reason=closure.reason,
                detail=closure.detail,
                compensations=closure.compensations,
            )
        if changed:
            saga_ended(record.created_at, closure.status, closure.reason)
        return StepOutcome(closure.order_id, changed=changed)
