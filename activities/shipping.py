"""Shipping steps: book one shipment per order, cancel it when compensating."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from temporalio import activity

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.providers import ShipmentReceipt, ShipmentRequest, ShippingCarrier
from activities.steps import compensation
from domain.errors import ShippingUnavailable
from infra import models
from infra.db import engine_of, insert_or_ignore, transaction
from infra.orders import OuterJoin, lock_order, lock_order_with_lines

CREATED = "created"
CANCELLED = "cancelled"

# The order's shipment, if any, beside its locked row.
_SHIPMENT: OuterJoin = (models.Shipment, models.Shipment.order_id == models.Order.id)


class ShippingActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], carrier: ShippingCarrier) -> None:
        self._engine = engine_of(session_factory)
        self._carrier = carrier

    @activity.defn
    async def create_shipment(self, order: OrderRef) -> StepOutcome:
        order_id = order.order_id
        request = await transaction(self._engine, lambda conn: _shipment_request(conn, order_id))
        if isinstance(request, StepOutcome):
            return request

        try:
            receipt = await self._carrier.create_shipment(request)
        except ShippingUnavailable as unavailable:
            raise business_failure(unavailable) from unavailable

        await transaction(self._engine, lambda conn: _record_shipment(conn, request, order_id, receipt))
        return StepOutcome(order_id, changed=True, detail=receipt.tracking_number)

    @compensation
    @activity.defn
    async def cancel_shipment(self, order: OrderRef) -> StepOutcome:
        return await transaction(self._engine, lambda conn: self._cancel(conn, order.order_id))

    async def _cancel(self, conn: AsyncConnection, order_id: str) -> StepOutcome:
        await lock_order(conn, order_id)
        # Read after the lock: a late create_shipment that committed meanwhile must be seen and cancelled.
        shipment = (
            await conn.execute(
                select(models.Shipment.tracking_number, models.Shipment.status).where(
                    models.Shipment.order_id == order_id
                )
            )
        ).first()
        if shipment is None or shipment.status == CANCELLED:
            return StepOutcome(order_id, changed=False, detail="nothing to cancel")
        await self._carrier.cancel_shipment(shipment.tracking_number)
        await conn.execute(
            update(models.Shipment).where(models.Shipment.order_id == order_id).values(status=CANCELLED)
        )
        return StepOutcome(order_id, changed=True, detail=shipment.tracking_number)


async def _shipment_request(conn: AsyncConnection, order_id: str) -> ShipmentRequest | StepOutcome:
    """What to ask the carrier for; or the outcome, when the order has its shipment already."""
    record, lines = await lock_order_with_lines(
        conn,
        order_id,
        models.Order.shipping_address,
        models.Shipment.tracking_number,
        outer_joins=[_SHIPMENT],
    )
    if record.tracking_number is not None:
        return StepOutcome(order_id, changed=False, detail=record.tracking_number)
    return ShipmentRequest(
        idempotency_key=f"{order_id}:shipment",
        country=record.shipping_address["country"],
        items=tuple((line.sku, line.quantity) for line in lines),
    )


async def _record_shipment(
    conn: AsyncConnection, request: ShipmentRequest, order_id: str, receipt: ShipmentReceipt
) -> None:
    await lock_order(conn, order_id)
    # One shipment per order (unique order id): a concurrent attempt's row, if any, is kept.
    await conn.execute(
        insert_or_ignore(conn, models.Shipment)
        .values(
            order_id=order_id,
            idempotency_key=request.idempotency_key,
            carrier=receipt.carrier,
            tracking_number=receipt.tracking_number,
            status=CREATED,
        )
        .on_conflict_do_nothing()
    )
