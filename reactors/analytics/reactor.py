"""The analytics reactor: daily sales per SKU and daily counts of orders shipped and cancelled.

Days are UTC days of the event's own time (shipped_at, cancelled_at), not of its processing, so a late or
retried event still lands on the right day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1, OrderCancelledV1, OrderShippedV1
from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.base import Reactor, unsupported
from reactors.sql import CounterRow, add_to_counters

NAME = "analytics"


async def apply_batch(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """The events' increments summed per counter row, then one upsert per table."""
    await _add(events, session, 1)


async def reset(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """Subtract what `apply_batch` adds for these events (before an operator's re-apply). The counters keep
    no per-event record: this takes back what the current code computes from the event, which is what the
    code that applied it added unless a fix changed that arithmetic (see README, "Event replay")."""
    await _add(events, session, -1)


async def _add(events: Sequence[ReceivedEvent], session: AsyncSession, sign: int) -> None:
    sales: list[CounterRow] = []
    orders: list[CounterRow] = []
    for event in events:
        match event.data:
            case OrderShippedV1() as shipped:
                day = shipped.shipped_at.astimezone(UTC).date()
                sales.extend(
                    (
                        {"day": day, "sku": line.sku, "currency": shipped.currency},
                        {"units": sign * line.quantity, "revenue": sign * line.line_total},
                    )
                    for line in shipped.lines
                )
                orders.append(({"day": day}, {"orders_shipped": sign, "orders_cancelled": 0}))
            case OrderCancelledV1() as cancelled:
                day = cancelled.cancelled_at.astimezone(UTC).date()
                orders.append(({"day": day}, {"orders_shipped": 0, "orders_cancelled": sign}))
            case _:
                raise unsupported(NAME, event)
    await add_to_counters(session, DailySkuSales, sales)
    await add_to_counters(session, DailyOrderCounts, orders)


async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
    await apply_batch([event], session)


REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key, ORDER_CANCELLED_V1.routing_key),
    apply=apply,
    apply_batch=apply_batch,
    reset=reset,
)
