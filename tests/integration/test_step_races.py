"""A step that waits for the order's lock while another step of the same order commits must see what that
step wrote (PostgreSQL, READ COMMITTED: a statement that waited for a row lock reads the other tables as
of its start). Each test holds the order's lock in a transaction of its own, writes what a late attempt
would, lets the step queue behind it, then commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.exceptions import ApplicationError

from activities.messages import OrderRef, StepOutcome
from activities.payments import PaymentActivities, idempotency_key
from activities.providers import ChargeRequest, SimulatedCarrier, SimulatedPaymentGateway
from activities.shipping import ShippingActivities
from infra import models
from infra.db import Database
from infra.orders import create_order
from infra.settings import Settings
from tests.e2e.conftest import Gate
from tests.support import add_product, order_command

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_backend", ["postgresql"])]


async def placed_order(db: Database, status: str) -> str:
    await add_product(db.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 1})
    await create_order(db.sessions, command)
    async with db.engine.begin() as conn:
        await conn.execute(
            update(models.Order).where(models.Order.id == command.order_id).values(status=status)
        )
    return command.order_id


async def behind_the_lock(
    db: Database,
    order_id: str,
    write: Callable[[AsyncConnection], Awaitable[None]],
    step: Callable[[], Coroutine[Any, Any, Any]],
) -> Any:
    """Run `step` while another transaction holds the order's lock and `write`s; commit that once the
    step waits for the lock. Returns what the step returned (or raises what it raised)."""
    async with db.engine.connect() as other:
        await other.execute(select(models.Order.id).where(models.Order.id == order_id).with_for_update())
        await write(other)
        running = asyncio.create_task(step())
        await waiting_for_a_lock(db)
        await other.commit()
    return await running


async def waiting_for_a_lock(db: Database) -> None:
    async with asyncio.timeout(10):
        while True:
            async with db.engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            if waiting:
                return
            await asyncio.sleep(0.02)


async def test_cancel_shipment_sees_a_shipment_committed_while_it_waited(
    database: tuple[Settings, Database],
) -> None:
    _, db = database
    order_id = await placed_order(db, "COMPENSATING")
    carrier = SimulatedCarrier()

    async def late_shipment(conn: AsyncConnection) -> None:
        await conn.execute(
            insert(models.Shipment).values(
                order_id=order_id,
                idempotency_key=f"{order_id}:shipment",
                carrier="sim",
                tracking_number="TRACK-LATE",
                status="created",
            )
        )

    outcome = await behind_the_lock(
        db,
        order_id,
        late_shipment,
        lambda: ShippingActivities(db.sessions, carrier).cancel_shipment(OrderRef(order_id)),
    )

    assert outcome == StepOutcome(order_id, changed=True, detail="TRACK-LATE")
    assert carrier.cancelled == {"TRACK-LATE"}


class HeldGateway(SimulatedPaymentGateway):
    """Holds each charge at a gate before charging."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    async def charge(self, request: ChargeRequest) -> str:
        await self.gate.pass_through()
        return await super().charge(request)


async def test_a_late_charge_sees_a_refund_that_gave_it_up_while_it_waited(
    database: tuple[Settings, Database],
) -> None:
    """The charge is inside the provider call; the saga compensates meanwhile and the refund, finding the
    charge pending and unknown to the provider, marks it abandoned. The charge then lands and queues
    behind that refund's lock: it must see `abandoned` and refund on the spot."""
    _, db = database
    order_id = await placed_order(db, "INVENTORY_RESERVED")
    gateway = HeldGateway()
    gateway.gate.close()
    charging = asyncio.create_task(PaymentActivities(db.sessions, gateway).charge_payment(OrderRef(order_id)))
    await asyncio.wait_for(gateway.gate.reached.wait(), 10)

    async def abandon_the_charge(conn: AsyncConnection) -> None:
        await conn.execute(
            update(models.Order).where(models.Order.id == order_id).values(status="COMPENSATING")
        )
        await conn.execute(
            update(models.Payment)
            .where(models.Payment.idempotency_key == idempotency_key(order_id, "charge"))
            .values(status="abandoned")
        )

    async def land_the_charge() -> Any:
        gateway.gate.open()
        return await charging

    with pytest.raises(ApplicationError) as late:
        await behind_the_lock(db, order_id, abandon_the_charge, land_the_charge)

    assert late.value.type == "LateCharge" and "refunded" in late.value.message
    refund = gateway.refunds[idempotency_key(order_id, "refund")]
    assert refund.amount == gateway.charges[idempotency_key(order_id, "charge")].amount == 1_250
