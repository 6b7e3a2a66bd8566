"""The read side: orders, their timeline, and what the reactors built from order events.

Answers are the API's own response models (`api.schemas`), mapped here from the rows, the timeline and
the reactors' query results, which stay internal. No HTTP here: an unknown order is `OrderNotFound`.
The reactors' read models are eventually consistent: they may lag an order's latest events.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import lazyload
from temporalio.client import Client

from api.errors import OrderNotFound
from api.pagination import OrderCursor, decode_order_cursor, encode_order_cursor
from api.schemas import (
    CustomerOut,
    DailySales,
    FailureOut,
    LoyaltyAccount,
    NotificationView,
    OrderLineOut,
    OrderNotifications,
    OrderOut,
    OrderPage,
    OrderSummaryOut,
    OrderTimeline,
    PaymentOut,
    ShipmentOut,
    ShippingAddressOut,
    StatusChangeOut,
    TimelineEntryOut,
)
from domain.model import OrderStatus
from infra import models
from reactors.analytics.queries import sales_on
from reactors.loyalty.queries import loyalty_account
from reactors.notification.queries import notifications_for_order
from timeline.sources import load_timeline


async def order_status(sessions: async_sessionmaker[AsyncSession], order_id: str) -> OrderStatus | None:
    """The order's recorded status, or None for an unknown order."""
    async with sessions() as session:
        status = await session.scalar(select(models.Order.status).where(models.Order.id == order_id))
    return OrderStatus(status) if status is not None else None


class OrderQueries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], temporal: Client) -> None:
        self._sessions = sessions
        self._temporal = temporal

    async def order(self, order_id: str) -> OrderOut:
        async with self._sessions() as session:
            order = await session.get(models.Order, order_id)
            if order is None:
                raise OrderNotFound(order_id)
            payments = await session.scalars(
                select(models.Payment).where(models.Payment.order_id == order_id).order_by(models.Payment.id)
            )
            shipment = await session.scalar(
                select(models.Shipment).where(models.Shipment.order_id == order_id)
            )
            history = await session.scalars(
                select(models.OrderStatusChange)
                .where(models.OrderStatusChange.order_id == order_id)
                .order_by(models.OrderStatusChange.id)
            )
            return _order_out(order, list(payments), shipment, list(history))

    async def orders(
        self,
        *,
        status: OrderStatus | None,
        customer_id: str | None,
        limit: int,
        cursor: str | None,
        created_from: datetime | None = None,
        created_before: datetime | None = None,
    ) -> OrderPage:
        """Newest first, by keyset: (created_at, id) below the cursor's, served by the orders indexes.
        `created_from` (inclusive) and `created_before` (exclusive), timezone-aware, bound the placement time.

        Raises InvalidCursor (`api.pagination`) for a cursor this API did not issue.
        """
        # Summaries need no lines: skip the relationship's eager load.
        query = select(models.Order).options(lazyload(models.Order.lines))
        if status is not None:
            query = query.where(models.Order.status == status)
        if customer_id is not None:
            query = query.where(models.Order.customer_id == customer_id)
        if created_from is not None:
            query = query.where(
                models.Order.created_at >= literal(created_from, models.Order.created_at.type)
            )
        if created_before is not None:
            query = query.where(
                models.Order.created_at < literal(created_before, models.Order.created_at.type)
            )
        if cursor is not None:
            after = decode_order_cursor(cursor)
            query = query.where(
                tuple_(models.Order.created_at, models.Order.id)
                < tuple_(
                    # Typed like the columns, so the timestamp is stored-format on every backend.
                    literal(after.created_at, models.Order.created_at.type),
                    literal(after.order_id, models.Order.id.type),
                )
            )
        query = query.order_by(models.Order.created_at.desc(), models.Order.id.desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        page, more = rows[:limit], len(rows) > limit
        return OrderPage(
            items=[_summary_out(order) for order in page],
            next_cursor=encode_order_cursor(OrderCursor(page[-1].created_at, page[-1].id)) if more else None,
        )

    async def timeline(self, order_id: str) -> OrderTimeline:
        timeline = await load_timeline(self._sessions, self._temporal, order_id)
        if timeline is None:
            raise OrderNotFound(order_id)
        return OrderTimeline(
            order_id=uuid.UUID(timeline.order_id),
            workflow_id=timeline.workflow_id,
            warnings=list(timeline.warnings),
            entries=[
                TimelineEntryOut.model_validate(entry, from_attributes=True) for entry in timeline.entries
            ],
        )

    async def notifications(self, order_id: str) -> OrderNotifications:
        async with self._sessions() as session:
            if await session.scalar(select(models.Order.id).where(models.Order.id == order_id)) is None:
                raise OrderNotFound(order_id)
            views = await notifications_for_order(session, order_id)
        return OrderNotifications(
            order_id=uuid.UUID(order_id),
            items=[NotificationView.model_validate(view, from_attributes=True) for view in views],
        )

    async def loyalty(self, customer_id: str, *, limit: int) -> LoyaltyAccount:
        async with self._sessions() as session:
            account = await loyalty_account(session, customer_id, limit=limit)
        return LoyaltyAccount.model_validate(account, from_attributes=True)

    async def sales(self, day: date) -> DailySales:
        async with self._sessions() as session:
            sales = await sales_on(session, day)
        return DailySales.model_validate(sales, from_attributes=True)


def _order_out(
    order: models.Order,
    payments: list[models.Payment],
    shipment: models.Shipment | None,
    history: list[models.OrderStatusChange],
) -> OrderOut:
    address = order.shipping_address
    return OrderOut(
        order_id=uuid.UUID(order.id),
        status=OrderStatus(order.status),
        customer=CustomerOut(id=order.customer_id, email=order.customer_email),
        currency=order.currency,
        total_amount=order.total_amount,
        lines=[
            OrderLineOut(
                line_no=line.line_no,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=line.unit_price,
                line_total=line.line_total,
            )
            for line in order.lines
        ],
        shipping_address=ShippingAddressOut(
            name=address["name"],
            line1=address["line1"],
            line2=address.get("line2"),
            city=address["city"],
            postal_code=address["postal_code"],
            country=address["country"],
        ),
        payments=[
            PaymentOut(
                kind=payment.kind,
                amount=payment.amount,
                currency=payment.currency,
                status=payment.status,
                reference=payment.provider_reference,
                failure_detail=payment.failure_detail,
            )
            for payment in payments
        ],
        shipment=(
            ShipmentOut(
                carrier=shipment.carrier, tracking_number=shipment.tracking_number, status=shipment.status
            )
            if shipment is not None
            else None
        ),
        status_history=[
            StatusChangeOut(status=OrderStatus(change.status), reason=change.reason, at=change.created_at)
            for change in history
        ],
        failure=(
            FailureOut(reason=order.failure_reason, detail=order.failure_detail)
            if order.failure_reason is not None
            else None
        ),
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def _summary_out(order: models.Order) -> OrderSummaryOut:
    return OrderSummaryOut(
        order_id=uuid.UUID(order.id),
        status=OrderStatus(order.status),
        customer_id=order.customer_id,
        currency=order.currency,
        total_amount=order.total_amount,
        failure_reason=order.failure_reason,
        created_at=order.created_at,
    )
