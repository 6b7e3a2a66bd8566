"""The loyalty reactor: credits one point per whole currency unit of every shipped order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_SHIPPED_V1, OrderShippedV1
from infra.models import utcnow
from reactors.base import Reactor, unsupported
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.sql import add_to_counters, table_of

NAME = "loyalty"
# ISO 4217 currencies whose minor unit is not the cent; every other currency has two decimals.
MINOR_UNIT_DIGITS = {"BHD": 3, "JOD": 3, "KWD": 3, "OMR": 3, "TND": 3, "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0}


def points_for(total_amount: int, currency: str) -> int:
    """Whole currency units in an amount of minor units: 1 point each, fractions dropped."""
    divisor: int = 10 ** MINOR_UNIT_DIGITS.get(currency, 2)
    return total_amount // divisor


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
                "reason": f"order shipped ({shipped.total_amount} {shipped.currency} minor units)",
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


REACTOR = Reactor(
    name=NAME, routing_keys=(ORDER_SHIPPED_V1.routing_key,), apply=apply, apply_batch=apply_batch
)
