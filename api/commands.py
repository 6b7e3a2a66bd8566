"""The write side of /orders: place an order, cancel one. No HTTP here: refusals are `api.errors`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.errors import CancelRefused, OrchestratorUnavailable, OrderNotFound, OrderRejected
from api.idempotency import IdempotencyKeys, request_fingerprint
from api.queries import order_status
from api.schemas import CancelAccepted, PlaceOrderIn
from api.security import Principal
from domain.errors import InvalidOrder, UnknownProduct
from domain.model import OrderStatus, PlaceOrder, RequestedItem, ShippingAddress
from infra.orders import create_order
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
        """Record the order, then start its saga; the same key and body again give the same order.

        Raises KeyReused / KeyInFlight (`api.idempotency`), OrderRejected (a domain rule refused the
        order; the key is freed), OrchestratorUnavailable (recorded, saga not started: retry).
        """
        claim = await self._keys.claim(principal.name, key, request_fingerprint(request), str(uuid.uuid4()))
        bind_log_context(order_id=claim.order_id)
        if claim.replay:
            return PlacedOrder(claim.order_id, await self._recorded_status(claim.order_id), replayed=True)

        command = to_command(claim.order_id, request)
        try:
            # None on a resumed claim whose order was recorded before its request died: keep it (its
            # saga then shows no amount in the Web UI).
            total = await create_order(self._sessions, command)
            if total is not None:
                metrics().orders_placed.inc()
        except (UnknownProduct, InvalidOrder) as rejected:
            # Nothing was written: the key is free again, for this body corrected.
            await self._keys.release(principal.name, key)
            raise OrderRejected(rejected, tuple(item.sku for item in request.items)) from rejected
        except Exception:
            await self._keys.mark_retryable(principal.name, key)
            raise
        try:
            await start_saga(
                self._temporal,
                self._task_queue,
                command.order_id,
                command.customer_id,
                items=command.items,
                total=total,
                console_url=console_order_url(self._public_url, command.order_id)
                if self._public_url
                else None,
            )
        except RPCError as err:
            await self._keys.mark_retryable(principal.name, key)
            raise OrchestratorUnavailable(command.order_id) from err
        except Exception:
            await self._keys.mark_retryable(principal.name, key)
            raise
        await self._keys.complete(principal.name, key)
        return PlacedOrder(command.order_id, await self._recorded_status(command.order_id), replayed=False)

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

    async def _recorded_status(self, order_id: str) -> OrderStatus:
        status = await order_status(self._sessions, order_id)
        if status is None:
            raise RuntimeError(f"order {order_id} is missing although its Idempotency-Key recorded it")
        return status


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
