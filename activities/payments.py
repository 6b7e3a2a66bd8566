"""Payment steps: charge once, refund once, whatever the retries."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.providers import ChargeRequest, PaymentGateway, RefundRequest
from activities.steps import compensation
from domain.errors import PaymentDeclined
from domain.model import OrderStatus
from infra import models
from infra.db import engine_of, execute_alone, insert_or_ignore, rowcount, transaction
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
        self._engine = engine_of(session_factory)
        self._gateway = gateway

    @activity.defn
    async def charge_payment(self, order: OrderRef) -> StepOutcome:
        order_id = order.order_id
        key = idempotency_key(order_id, CHARGE)
        # 1. Record the intent (pending) before calling out, so every attempt shares one row.
        intent = await transaction(self._engine, lambda conn: _charge_intent(conn, order_id, key))
        if isinstance(intent, StepOutcome):
            return intent

        # 2. Call the provider outside any transaction; it deduplicates by the same key.
        try:
            reference = await self._gateway.charge(intent)
        except PaymentDeclined as declined:
            await execute_alone(
                self._engine,
                update(models.Payment)
                .where(models.Payment.idempotency_key == key)
                .values(status=DECLINED, failure_detail=str(declined)),
            )
            raise business_failure(declined) from declined

        # 3. Record the success and move the order on, in one transaction. The money is recorded whatever
        # the order's state, so that a compensation can always see and refund it.
        compensated_already, in_progress = await transaction(
            self._engine, lambda conn: _record_charge(conn, order_id, key, reference)
        )
        if in_progress:
            return StepOutcome(order_id, changed=True, detail=reference)
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
        order_id = order.order_id
        if not await self._settle_charge(order_id):
            return StepOutcome(order_id, changed=False, detail="nothing charged")
        request = await transaction(self._engine, lambda conn: _refund_intent(conn, order_id))
        if isinstance(request, StepOutcome):
            return request

        reference = await self._gateway.refund(request)

        await execute_alone(
            self._engine,
            update(models.Payment)
            .where(models.Payment.idempotency_key == request.idempotency_key)
            .values(status=SUCCEEDED, provider_reference=reference),
        )
        return StepOutcome(order_id, changed=True, detail=reference)

    async def _settle_charge(self, order_id: str) -> bool:
        """Whether the order was charged. A charge still `pending` here means its attempts ended without
        recording an outcome (a worker died mid-call, retries ran out): the provider, asked by the same
        idempotency key, tells whether it charged, so a compensation never misses money it took."""
        key = idempotency_key(order_id, CHARGE)
        status = await transaction(self._engine, lambda conn: _payment_status(conn, key))
        if status != PENDING:
            return status == SUCCEEDED
        reference = await self._gateway.find_charge(key)
        return await transaction(self._engine, lambda conn: _settle_pending(conn, order_id, key, reference))


_CHARGE = aliased(models.Payment, name="charge")
_REFUND = aliased(models.Payment, name="refund")


async def _charge_intent(conn: AsyncConnection, order_id: str, key: str) -> ChargeRequest | StepOutcome:
    """The charge to ask the provider for, its pending row written; or the outcome already recorded."""
    record = await lock_order(
        conn,
        order_id,
        models.Order.total_amount,
        models.Order.currency,
        models.Order.payment_token,
        _CHARGE.status.label("charge_status"),
        _CHARGE.provider_reference,
        _CHARGE.failure_detail,
        outer_joins=[(_CHARGE, _CHARGE.idempotency_key == key)],
    )
    if record.charge_status == SUCCEEDED:
        return StepOutcome(order_id, changed=False, detail=record.provider_reference or "")
    if record.charge_status == DECLINED:
        raise business_failure(PaymentDeclined(record.failure_detail or "declined"))
    if record.charge_status is None:
        await _record_pending(conn, order_id, CHARGE, key, record.total_amount, record.currency)
    return ChargeRequest(key, record.total_amount, record.currency, record.payment_token)


async def _record_charge(conn: AsyncConnection, order_id: str, key: str, reference: str) -> tuple[bool, bool]:
    """Record the provider's success. Returns (a refund already ran for it, the order is still charging)."""
    record = await lock_order(conn, order_id)
    # UPDATEs see the row's latest version: a refund that marked it ABANDONED just before is not missed.
    recorded = update(models.Payment).values(status=SUCCEEDED, provider_reference=reference)
    by_key = models.Payment.idempotency_key == key
    compensated_already = False
    if rowcount(await conn.execute(recorded.where(by_key, models.Payment.status != ABANDONED))) == 0:
        compensated_already = rowcount(await conn.execute(recorded.where(by_key))) == 1
        assert compensated_already, f"charge {key} has no pending row"
    in_progress = record.status in (OrderStatus.INVENTORY_RESERVED, OrderStatus.PAYMENT_CHARGED)
    if in_progress:
        await transition(conn, order_id, record.status, OrderStatus.PAYMENT_CHARGED)
    return compensated_already, in_progress


async def _refund_intent(conn: AsyncConnection, order_id: str) -> RefundRequest | StepOutcome:
    """The refund of the order's succeeded charge, its pending row written; or the outcome recorded."""
    key = idempotency_key(order_id, REFUND)
    record = await lock_order(
        conn,
        order_id,
        _CHARGE.status.label("charge_status"),
        _CHARGE.provider_reference,
        _CHARGE.amount,
        _CHARGE.currency,
        _REFUND.status.label("refund_status"),
        outer_joins=[
            (_CHARGE, _CHARGE.idempotency_key == idempotency_key(order_id, CHARGE)),
            (_REFUND, _REFUND.idempotency_key == key),
        ],
    )
    assert record.charge_status == SUCCEEDED and record.provider_reference is not None
    if record.refund_status == SUCCEEDED:
        return StepOutcome(order_id, changed=False, detail="already refunded")
    if record.refund_status is None:
        await _record_pending(conn, order_id, REFUND, key, record.amount, record.currency)
    return RefundRequest(key, record.provider_reference, record.amount, record.currency)


async def _payment_status(conn: AsyncConnection, key: str) -> str | None:
    status: str | None = await conn.scalar(
        select(models.Payment.status).where(models.Payment.idempotency_key == key)
    )
    return status


async def _settle_pending(conn: AsyncConnection, order_id: str, key: str, reference: str | None) -> bool:
    """Record what the provider said of a pending charge; whether the order was charged."""
    await lock_order(conn, order_id)
    settled = SUCCEEDED if reference is not None else ABANDONED
    await conn.execute(
        update(models.Payment)
        .where(models.Payment.idempotency_key == key, models.Payment.status == PENDING)
        .values(status=settled, provider_reference=reference)
    )
    return await _payment_status(conn, key) == SUCCEEDED


async def _record_pending(
    conn: AsyncConnection, order_id: str, kind: str, key: str, amount: int, currency: str
) -> None:
    """The intent of a charge or refund (`amount` in minor units), written before the provider is called so
    that every attempt, and a later reconciliation, finds the same row by its idempotency key. A row that
    exists already (written by a concurrent attempt the lock waited for) is kept."""
    await conn.execute(
        insert_or_ignore(conn, models.Payment)
        .values(
            order_id=order_id,
            kind=kind,
            idempotency_key=key,
            amount=amount,
            currency=currency,
            status=PENDING,
        )
        .on_conflict_do_nothing()
    )
