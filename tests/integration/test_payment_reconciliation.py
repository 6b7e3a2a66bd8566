"""Refunding an order whose charge outcome was never recorded: the provider is asked, by idempotency key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError

from activities.messages import OrderRef, StepOutcome
from activities.payments import PaymentActivities, idempotency_key
from activities.providers import ChargeRequest, SimulatedPaymentGateway
from infra import models
from infra.db import Database
from infra.orders import create_order
from infra.settings import Settings
from tests.support import add_product, order_command

pytestmark = pytest.mark.integration


async def _order_with_pending_charge(db: Database) -> str:
    await add_product(db.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 2})
    await create_order(db.sessions, command)
    async with db.sessions() as session, session.begin():
        session.add(
            models.Payment(
                order_id=command.order_id,
                kind="charge",
                idempotency_key=idempotency_key(command.order_id, "charge"),
                amount=2_500,
                currency="EUR",
                status="pending",
            )
        )
    return command.order_id


async def _payments(db: Database, order_id: str) -> list[tuple[str, str]]:
    async with db.sessions() as session:
        rows = (
            await session.scalars(select(models.Payment).where(models.Payment.order_id == order_id))
        ).all()
    return sorted((row.kind, row.status) for row in rows)


async def test_a_charge_the_provider_made_is_recorded_then_refunded(
    database: tuple[Settings, Database],
) -> None:
    _, db = database
    order_id = await _order_with_pending_charge(db)
    gateway = SimulatedPaymentGateway()
    # The provider charged, but the worker died before recording it and the retries ran out.
    await gateway.charge(ChargeRequest(idempotency_key(order_id, "charge"), 2_500, "EUR", "tok_ok"))

    outcome = await PaymentActivities(db.sessions, gateway).refund_payment(OrderRef(order_id))

    assert outcome.changed
    assert await _payments(db, order_id) == [("charge", "succeeded"), ("refund", "succeeded")]
    assert list(gateway.refunds) == [idempotency_key(order_id, "refund")]


async def test_a_charge_the_provider_never_made_is_abandoned_and_nothing_refunded(
    database: tuple[Settings, Database],
) -> None:
    _, db = database
    order_id = await _order_with_pending_charge(db)
    gateway = SimulatedPaymentGateway()

    activities = PaymentActivities(db.sessions, gateway)
    first = await activities.refund_payment(OrderRef(order_id))
    again = await activities.refund_payment(OrderRef(order_id))

    assert not first.changed and not again.changed
    assert await _payments(db, order_id) == [("charge", "abandoned")]
    assert gateway.refunds == {}


class HangingGateway(SimulatedPaymentGateway):
    """A provider whose charge call hangs until released, like one answering after the activity timed out."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def charge(self, request: ChargeRequest) -> str:
        self.called.set()
        await self.release.wait()
        return await super().charge(request)


@dataclass
class HungCharge:
    order_id: str
    gateway: HangingGateway
    activities: PaymentActivities
    attempt: asyncio.Future[StepOutcome]  # the charge attempt, waiting inside the provider call


async def _hung_charge(db: Database) -> HungCharge:
    order_id = await _order_with_pending_charge(db)
    gateway = HangingGateway()
    activities = PaymentActivities(db.sessions, gateway)
    attempt = asyncio.ensure_future(activities.charge_payment(OrderRef(order_id)))
    await gateway.called.wait()
    return HungCharge(order_id, gateway, activities, attempt)


async def test_a_charge_that_completes_after_the_compensation_is_refunded(
    database: tuple[Settings, Database],
) -> None:
    _, db = database
    hung = await _hung_charge(db)
    order_id, gateway, activities = hung.order_id, hung.gateway, hung.activities
    # The attempt's timeout passed, so the saga compensated: the refund found nothing charged yet.
    assert not (await activities.refund_payment(OrderRef(order_id))).changed
    assert await _payments(db, order_id) == [("charge", "abandoned")]

    gateway.release.set()  # then the provider charged after all
    with pytest.raises(ApplicationError, match="completed after the order was compensated; refunded"):
        await hung.attempt

    assert await _payments(db, order_id) == [("charge", "succeeded"), ("refund", "succeeded")]
    assert list(gateway.charges) == [idempotency_key(order_id, "charge")]
    assert list(gateway.refunds) == [idempotency_key(order_id, "refund")]
    async with db.sessions() as session:
        order = await session.get(models.Order, order_id)
    assert order is not None and order.status == "PLACED"  # the late attempt moved no order state


async def test_a_charge_that_completes_while_compensating_is_left_for_the_refund(
    database: tuple[Settings, Database],
) -> None:
    _, db = database
    hung = await _hung_charge(db)
    order_id, gateway, activities = hung.order_id, hung.gateway, hung.activities
    async with db.sessions() as session, session.begin():  # the saga gave up on the charge: compensating
        order = await session.get(models.Order, order_id)
        assert order is not None
        order.status = "COMPENSATING"

    gateway.release.set()
    with pytest.raises(ApplicationError, match="the refund will find it"):
        await hung.attempt
    assert await _payments(db, order_id) == [("charge", "succeeded")]

    assert (await activities.refund_payment(OrderRef(order_id))).changed
    assert await _payments(db, order_id) == [("charge", "succeeded"), ("refund", "succeeded")]
