"""The write side of /orders: place an order, cancel one. No HTTP here: refusals are `api.errors`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.errors import CancelRefused, OrchestratorUnavailable, OrderNotFound, OrderRejected
from api.idempotency import IdempotencyKeys, request_fingerprint
from api.queries import order_status
from api.schemas import CancelAccepted, PlaceOrderIn
from api.security import Principal
from domain.errors import InvalidOrder, UnknownProduct
from domain.model import Money, OrderStatus, PlaceOrder, RequestedItem, ShippingAddress
from infra.orders import insert_order, order_total
from observability.logs import bind_log_context
from observability.metrics import metrics
from orchestrator.client import console_order_url, request_cancel, start_saga


@dataclass(frozen=True)
class PlacedOrder:
    order_id: str
    status: OrderStatus
    # True when the Idempotency-Key had already produced this order: nothing new was done.
    replayed: bool


class OrderCommands:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        temporal: Client,
        task_queue: str,
        keys: IdempotencyKeys,
        public_url: str | None = None,
    ) -> None:
        """`public_url` (API_PUBLIC_URL): each saga links its order's console page from the Web UI."""
        self._sessions = sessions
        self._temporal = temporal
        self._task_queue = task_queue
        self._keys = keys
        self._public_url = public_url

    async def place(self, principal: Principal, key: str, request: PlaceOrderIn) -> PlacedOrder:
        """Claim the key and record the order in one transaction, then start its saga; the same key and
        body again give the same order. The answer is built from what was written (no read-back).

        If the saga's start fails or the process dies before it, the order stays PLACED under its key: the
        client's retry with the same key (at once after a clean failure, after the lease after a crash)
        starts that order's saga, which is idempotent by its workflow id, and answers as the first would.
        Raises KeyReused / KeyInFlight (`api.idempotency`), OrderRejected (a domain rule refused the
        order; nothing is kept and the key is free), OrchestratorUnavailable (recorded, saga not
        started: retry).
        """

        total: Money | None = None  # set by `record`, when this request writes the order

        async def record(conn: AsyncConnection, order_id: str) -> None:
            nonlocal total
            total = await insert_order(conn, to_command(order_id, request))

        try:
            claim = await self._keys.claim(
                principal.name, key, request_fingerprint(request), str(uuid.uuid4()), record
            )
        except (UnknownProduct, InvalidOrder) as rejected:
            raise OrderRejected(rejected, tuple(item.sku for item in request.items)) from rejected
        bind_log_context(order_id=claim.order_id)
        if claim.created:
            metrics().orders_placed.inc()
        if claim.replay:
            return PlacedOrder(claim.order_id, claim.status, replayed=True)
        if total is None:  # a retry resuming a claim whose first request died after the order's commit
            total = await order_total(self._sessions, claim.order_id)
        try:
            await start_saga(
                self._temporal,
                self._task_queue,
                claim.order_id,
                request.customer.id,
                items=to_command(claim.order_id, request).items,
                total=total,  # without it the Web UI shows no amount
                console_url=console_order_url(self._public_url, claim.order_id) if self._public_url else None,
            )
        except RPCError as err:
            await self._keys.mark_retryable(principal.name, key)
            raise OrchestratorUnavailable(claim.order_id) from err
        except Exception:
            await self._keys.mark_retryable(principal.name, key)
            raise
        await self._keys.complete(principal.name, key)
        return PlacedOrder(claim.order_id, claim.status, replayed=False)

    async def cancel(self, order_id: str, reason: str) -> CancelAccepted:
        """Ask the saga to cancel. Raises OrderNotFound, or CancelRefused once it is too late
        (shipping started, or the order ended)."""
        status = await order_status(self._sessions, order_id)
        if status is None:
            raise OrderNotFound(order_id)
        if status.is_terminal:
            raise CancelRefused(order_id, status, f"the order is already {status}")
        try:
            outcome = await request_cancel(self._temporal, order_id, reason)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            # The saga ended between our read and the request, or never started.
            status = await order_status(self._sessions, order_id) or status
            raise CancelRefused(order_id, status, "the order is not being processed any more") from err
        if not outcome.accepted:
            raise CancelRefused(order_id, outcome.status, outcome.reason)
        return CancelAccepted(order_id=uuid.UUID(order_id), status=outcome.status, detail=outcome.reason)


def to_command(order_id: str, request: PlaceOrderIn) -> PlaceOrder:
    """The domain's command for a validated request, under the order id the API chose."""
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
