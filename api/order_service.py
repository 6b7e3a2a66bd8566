"""Placing, reading and cancelling orders: what the /orders routes do, free of HTTP plumbing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus

from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import lazyload
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.idempotency import IdempotencyKeys, KeyInFlight, KeyReused, request_fingerprint
from api.pagination import InvalidCursor, OrderCursor, decode_order_cursor, encode_order_cursor
from api.problems import ApiProblem, FieldError, invalid_cursor, problem_type
from api.schemas import (
    CancelAccepted,
    CustomerOut,
    FailureOut,
    OrderLineOut,
    OrderOut,
    OrderPage,
    OrderSummaryOut,
    PaymentOut,
    PlaceOrderIn,
    ShipmentOut,
    ShippingAddressOut,
    StatusChangeOut,
)
from api.security import Principal
from domain.errors import CurrencyMismatch, DomainError, InvalidOrder, UnknownProduct
from domain.model import OrderStatus, PlaceOrder, RequestedItem, ShippingAddress
from infra import models
from infra.orders import create_order
from observability.logs import bind_log_context
from observability.metrics import metrics
from orchestrator.client import request_cancel, start_saga


@dataclass(frozen=True)
class PlacedOrder:
    order_id: str
    status: OrderStatus
    # True when the Idempotency-Key had already produced this order: nothing new was done.
    replayed: bool


def order_not_found(order_id: str) -> ApiProblem:
    return ApiProblem(
        HTTPStatus.NOT_FOUND, f"there is no order {order_id}", type_=problem_type("order-not-found")
    )


class OrderService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        temporal: Client,
        task_queue: str,
        keys: IdempotencyKeys,
    ) -> None:
        self._sessions = sessions
        self._temporal = temporal
        self._task_queue = task_queue
        self._keys = keys

    async def place(self, principal: Principal, key: str, request: PlaceOrderIn) -> PlacedOrder:
        """Record the order, then start its saga; the same key and body again give the same order."""
        try:
            claim = await self._keys.claim(
                principal.name, key, request_fingerprint(request), str(uuid.uuid4())
            )
        except KeyReused as err:
            raise ApiProblem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was already used with a different request body",
                type_=problem_type("idempotency-key-reused"),
            ) from err
        except KeyInFlight as err:
            raise ApiProblem(
                HTTPStatus.CONFLICT,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                type_=problem_type("idempotency-key-in-flight"),
                headers={"Retry-After": "1"},
            ) from err
        bind_log_context(order_id=claim.order_id)
        if claim.replay:
            return PlacedOrder(claim.order_id, await self._recorded_status(claim.order_id), replayed=True)

        command = to_command(claim.order_id, request)
        try:
            # False on a resumed claim whose order was recorded before its request died: keep it.
            if await create_order(self._sessions, command):
                metrics().orders_placed.inc()
        except (UnknownProduct, InvalidOrder) as rejected:
            # Nothing was written: the key is free again, for this body corrected.
            await self._keys.release(principal.name, key)
            raise order_rejected(rejected, request) from rejected
        except Exception:
            await self._keys.mark_retryable(principal.name, key)
            raise
        try:
            await start_saga(self._temporal, self._task_queue, command.order_id, command.customer_id)
        except RPCError as err:
            await self._keys.mark_retryable(principal.name, key)
            raise ApiProblem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the order is recorded but its processing could not start; "
                "retry with the same Idempotency-Key",
                type_=problem_type("orchestrator-unavailable"),
                headers={"Retry-After": "5"},
            ) from err
        except Exception:
            await self._keys.mark_retryable(principal.name, key)
            raise
        await self._keys.complete(principal.name, key)
        return PlacedOrder(command.order_id, await self._recorded_status(command.order_id), replayed=False)

    async def cancel(self, order_id: str, reason: str) -> CancelAccepted:
        """Ask the saga to cancel; ApiProblem 409 once it is too late (shipping started, or ended)."""
        status = await self._status(order_id)
        if status is None:
            raise order_not_found(order_id)
        if status.is_terminal:
            raise cancel_refused(order_id, status, f"the order is already {status}")
        try:
            outcome = await request_cancel(self._temporal, order_id, reason)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            # The saga ended between our read and the request, or never started.
            status = await self._status(order_id) or status
            raise cancel_refused(order_id, status, "the order is not being processed any more") from err
        if not outcome.accepted:
            raise cancel_refused(order_id, outcome.status, outcome.reason)
        return CancelAccepted(order_id=uuid.UUID(order_id), status=outcome.status, detail=outcome.reason)

    async def get(self, order_id: str) -> OrderOut:
        async with self._sessions() as session:
            order = await session.get(models.Order, order_id)
            if order is None:
                raise order_not_found(order_id)
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

    async def list(
        self, *, status: OrderStatus | None, customer_id: str | None, limit: int, cursor: str | None
    ) -> OrderPage:
        """Newest first, by keyset: (created_at, id) below the cursor's, served by the orders indexes."""
        # Summaries need no lines: skip the relationship's eager load.
        query = select(models.Order).options(lazyload(models.Order.lines))
        if status is not None:
            query = query.where(models.Order.status == status)
        if customer_id is not None:
            query = query.where(models.Order.customer_id == customer_id)
        if cursor is not None:
            after = _decode_order_cursor(cursor)
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

    async def _status(self, order_id: str) -> OrderStatus | None:
        async with self._sessions() as session:
            status = await session.scalar(select(models.Order.status).where(models.Order.id == order_id))
        return OrderStatus(status) if status is not None else None

    async def _recorded_status(self, order_id: str) -> OrderStatus:
        status = await self._status(order_id)
        if status is None:
            raise RuntimeError(f"order {order_id} is missing although its Idempotency-Key recorded it")
        return status


def to_command(order_id: str, request: PlaceOrderIn) -> PlaceOrder:
    address = request.shipping_address
    return PlaceOrder(
        order_id=order_id,
        customer_id=request.customer.id,
        customer_email=str(request.customer.email),
        items=tuple(RequestedItem(item.sku, item.quantity) for item in request.items),
        payment_token=request.payment_token,
        shipping_address=ShippingAddress(
            name=address.name,
            line1=address.line1,
            line2=address.line2,
            city=address.city,
            postal_code=address.postal_code,
            country=address.country,
        ),
    )


def order_rejected(rejected: DomainError, request: PlaceOrderIn) -> ApiProblem:
    """A domain rule refused the order (unknown SKU, mixed currencies...): 422 naming the lines."""
    if isinstance(rejected, UnknownProduct):
        slug, code, culprits = "unknown-product", "unknown_product", set(rejected.skus)
    elif isinstance(rejected, CurrencyMismatch):
        slug, code, culprits = "currency-mismatch", "currency_mismatch", {item.sku for item in request.items}
    else:
        slug, code, culprits = "invalid-order", "invalid_order", set()
    errors = [
        FieldError(
            location="body",
            name=f"items.{index}.sku",
            pointer=f"/items/{index}/sku",
            detail=f"{item.sku}: {rejected}",
            code=code,
        )
        for index, item in enumerate(request.items)
        if item.sku in culprits
    ]
    return ApiProblem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        str(rejected),
        type_=problem_type(slug),
        title="The order cannot be placed",
        errors=errors,
    )


def cancel_refused(order_id: str, status: OrderStatus, reason: str) -> ApiProblem:
    return ApiProblem(
        HTTPStatus.CONFLICT,
        reason,
        type_=problem_type("cancel-refused"),
        title="Too late to cancel",
        order_id=order_id,
        order_status=str(status),
    )


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


def _decode_order_cursor(token: str) -> OrderCursor:
    try:
        return decode_order_cursor(token)
    except InvalidCursor as err:
        raise invalid_cursor(err) from err
