"""Payment steps: charge once, refund once, whatever the retries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.providers import ChargeRequest, PaymentGateway, RefundRequest
from activities.steps import compensation
from domain.errors import PaymentDeclined
from domain.model import OrderStatus
from infra import models
from infra.orders import lock_order, transition

CHARGE = "charge"
REFUND = "refund"
PENDING = "pending"
SUCCEEDED = "succeeded"
DECLINED = "declined"
# A charge intent whose attempts all ended without the provider charging (found out when compensating).
# An attempt that hung past its timeout and charged afterwards turns it back to succeeded and refunds it.
ABANDONED = "abandoned"


def idempotency_key(order_id: str, kind: str) -> str:
    """One key per order and step: a retried or duplicated call reuses it."""
    return f"{order_id}:{kind}"


class PaymentActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], gateway: PaymentGateway) -> None:
        self._sessions = session_factory
        self._gateway = gateway

    @activity.defn
    async def charge_payment(self, order: OrderRef) -> StepOutcome:
        key = idempotency_key(order.order_id, CHARGE)
        # 1. Record the intent (pending) before calling out, so every attempt shares one row.
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, order.order_id)
            payment = await _payment_by_key(session, key)
            if payment is not None and payment.status == SUCCEEDED:
                return StepOutcome(order.order_id, changed=False, detail=payment.provider_reference or "")
            if payment is not None and payment.status == DECLINED:
                raise business_failure(PaymentDeclined(payment.failure_detail or "declined"))
            if payment is None:
                _record_pending(session, record.id, CHARGE, key, record.total_amount, record.currency)
            request = ChargeRequest(key, record.total_amount, record.currency, record.payment_token)

        # 2. Call the provider outside any transaction; it deduplicates by the same key.
        try:
            reference = await self._gateway.charge(request)
        except PaymentDeclined as declined:
            async with self._sessions() as session, session.begin():
                payment = await _payment_by_key(session, key)
                assert payment is not None
                payment.status = DECLINED
                payment.failure_detail = str(declined)
            raise business_failure(declined) from declined

        # 3. Record the success and move the order on, in one transaction. The money is recorded whatever
        # the order's state, so that a compensation can always see and refund it.
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, order.order_id)
            payment = await _payment_by_key(session, key)
            assert payment is not None
            compensated_already = payment.status == ABANDONED
            payment.status = SUCCEEDED
            payment.provider_reference = reference
            in_progress = record.status in (OrderStatus.INVENTORY_RESERVED, OrderStatus.PAYMENT_CHARGED)
            if in_progress:
                transition(session, record, OrderStatus.PAYMENT_CHARGED)
        if in_progress:
            return StepOutcome(order.order_id, changed=True, detail=reference)
        # Only an attempt that outlived its timeout gets here: the saga moved on to compensate without it.
        # A refund still to come finds this charge; one that already ran (ABANDONED) needs doing now.
        if compensated_already:
            await self.refund_payment(order)
        raise ApplicationError(
            f"charge {reference} completed after the order was compensated"
            + ("; refunded" if compensated_already else "; the refund will find it"),
            type="LateCharge",
            non_retryable=True,
        )

    @compensation
    @activity.defn
    async def refund_payment(self, order: OrderRef) -> StepOutcome:
        if not await self._settle_charge(order.order_id):
            return StepOutcome(order.order_id, changed=False, detail="nothing charged")
        key = idempotency_key(order.order_id, REFUND)
        async with self._sessions() as session, session.begin():
            await lock_order(session, order.order_id)
            charge = await _payment_by_key(session, idempotency_key(order.order_id, CHARGE))
            assert charge is not None and charge.status == SUCCEEDED
            refund = await _payment_by_key(session, key)
            if refund is not None and refund.status == SUCCEEDED:
                return StepOutcome(order.order_id, changed=False, detail="already refunded")
            if refund is None:
                _record_pending(session, order.order_id, REFUND, key, charge.amount, charge.currency)
            assert charge.provider_reference is not None
            request = RefundRequest(key, charge.provider_reference, charge.amount, charge.currency)

        reference = await self._gateway.refund(request)

        async with self._sessions() as session, session.begin():
            refund = await _payment_by_key(session, key)
            assert refund is not None
            refund.status = SUCCEEDED
            refund.provider_reference = reference
        return StepOutcome(order.order_id, changed=True, detail=reference)

    async def _settle_charge(self, order_id: str) -> bool:
        """Whether the order was charged. A charge still `pending` here means its attempts ended without
        recording an outcome (a worker died mid-call, retries ran out): the provider, asked by the same
        idempotency key, tells whether it charged, so a compensation never misses money it took."""
        key = idempotency_key(order_id, CHARGE)
        async with self._sessions() as session:
            charge = await _payment_by_key(session, key)
            if charge is None or charge.status != PENDING:
                return charge is not None and charge.status == SUCCEEDED
        reference = await self._gateway.find_charge(key)
        async with self._sessions() as session, session.begin():
            await lock_order(session, order_id)
            charge = await _payment_by_key(session, key)
            assert charge is not None
            if charge.status == PENDING:
                charge.status = SUCCEEDED if reference is not None else ABANDONED
                charge.provider_reference = reference
            return charge.status == SUCCEEDED


async def _payment_by_key(session: AsyncSession, key: str) -> models.Payment | None:
    return await session.scalar(select(models.Payment).where(models.Payment.idempotency_key == key))


def _record_pending(
    session: AsyncSession, order_id: str, kind: str, key: str, amount: int, currency: str
) -> None:
    """The intent of a charge or refund (`amount` in minor units), written before the provider is called so
    that every attempt, and a later reconciliation, finds the same row by its idempotency key."""
    session.add(
        models.Payment(
            order_id=order_id,
            kind=kind,
            idempotency_key=key,
            amount=amount,
            currency=currency,
            status=PENDING,
        )
    )
