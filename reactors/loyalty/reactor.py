"""The loyalty reactor: credits one point per whole currency unit of every shipped order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_SHIPPED_V1, OrderShippedV1
from domain import money
from infra.models import utcnow
from reactors.base import PermanentError, Reactor, unsupported
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.sql import add_to_counters, table_of

NAME = "loyalty"


def points_for(total_amount: int, currency: str) -> int:
    """`points_for(total_amount: int, currency: str) -> int`: 1 point per whole currency unit in an amount
    of minor units, the fraction dropped (1999 EUR cents -> 19, 1500 JPY -> 1500, 1500 KWD fils -> 1); the
    exponent comes from ISO 4217 (domain.money).

    Raises PermanentError for a currency the money module cannot handle (no retry can fix it).
    """
    try:
        return money.whole_units(total_amount, currency)
    except money.UnsupportedCurrency as err:
        raise PermanentError(f"{NAME}: cannot credit points: {err}") from err


async def apply_batch(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """One ledger insert for every event, one balance upsert per customer (their points summed)."""
    entries: list[dict[str, Any]] = []
    for event in events:
        if not isinstance(event.data, OrderShippedV1):
            raise unsupported(NAME, event)
        shipped = event.data
        entries.append(
            {
                "customer_id": shipped.customer_id,
                "event_id": event.id,
                "order_id": shipped.order_id,
                "points": points_for(shipped.total_amount, shipped.currency),
                "reason": f"order shipped ({money.format_amount(shipped.total_amount, shipped.currency)})",
                "created_at": utcnow(),
            }
        )
    if not entries:
        return
    await session.execute(insert(table_of(LoyaltyLedgerEntry)), entries)
    await add_to_counters(
        session,
        LoyaltyBalance,
        [({"customer_id": entry["customer_id"]}, {"points": entry["points"]}) for entry in entries],
        also_set={"updated_at": utcnow()},
    )


async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
    await apply_batch([event], session)


async def reset(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """Reverse the points of these events (before an operator's re-apply): their ledger entries go and each
    balance loses the points those entries recorded, not recomputed ones, so a re-apply after a fix of
    the formula takes back exactly what the old formula credited."""
    removed = await session.execute(
        delete(LoyaltyLedgerEntry)
        .where(LoyaltyLedgerEntry.event_id.in_([event.id for event in events]))
        .returning(LoyaltyLedgerEntry.customer_id, LoyaltyLedgerEntry.points)
    )
    await add_to_counters(
        session,
        LoyaltyBalance,
        [({"customer_id": customer_id}, {"points": -points}) for customer_id, points in removed],
        also_set={"updated_at": utcnow()},
    )


REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key,),
    apply=apply,
    apply_batch=apply_batch,
    reset=reset,
)
