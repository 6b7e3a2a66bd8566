"""Shipping steps: book one shipment per order, cancel it when compensating."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.errors import business_failure
from activities.messages import OrderRef, StepOutcome
from activities.providers import ShipmentRequest, ShippingCarrier
from activities.steps import compensation
from domain.errors import ShippingUnavailable
from infra import models
from infra.orders import lock_order

CREATED = "created"
CANCELLED = "cancelled"


class ShippingActivities:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], carrier: ShippingCarrier) -> None:
        self._sessions = session_factory
        self._carrier = carrier

    @activity.defn
    async def create_shipment(self, order: OrderRef) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            record = await lock_order(session, order.order_id, with_lines=True)
            existing = await _shipment_of(session, order.order_id)
            if existing is not None:
                return StepOutcome(order.order_id, changed=False, detail=existing.tracking_number)
            request = ShipmentRequest(
                idempotency_key=f"{order.order_id}:shipment",
                country=record.shipping_address["country"],
                items=tuple((line.sku, line.quantity) for line in record.lines),
            )

        try:
            receipt = await self._carrier.create_shipment(request)
        except ShippingUnavailable as unavailable:
            raise business_failure(unavailable) from unavailable

        async with self._sessions() as session, session.begin():
            await lock_order(session, order.order_id)
            if await _shipment_of(session, order.order_id) is None:
                session.add(
                    models.Shipment(
                        order_id=order.order_id,
                        idempotency_key=request.idempotency_key,
                        carrier=receipt.carrier,
                        tracking_number=receipt.tracking_number,
                        status=CREATED,
                    )
                )
        return StepOutcome(order.order_id, changed=True, detail=receipt.tracking_number)

    @compensation
    @activity.defn
    async def cancel_shipment(self, order: OrderRef) -> StepOutcome:
        async with self._sessions() as session, session.begin():
            await lock_order(session, order.order_id)
            shipment = await _shipment_of(session, order.order_id)
            if shipment is None or shipment.status == CANCELLED:
                return StepOutcome(order.order_id, changed=False, detail="nothing to cancel")
            await self._carrier.cancel_shipment(shipment.tracking_number)
            shipment.status = CANCELLED
        return StepOutcome(order.order_id, changed=True, detail=shipment.tracking_number)


async def _shipment_of(session: AsyncSession, order_id: str) -> models.Shipment | None:
    return await session.scalar(select(models.Shipment).where(models.Shipment.order_id == order_id))
