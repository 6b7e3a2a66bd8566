"""Client side of the saga: connect, place an order (row + saga), follow it, cancel it."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from activities.messages import CancelOutcome, CancelRequest, OrderSagaInput, OrderSagaResult
from domain.model import OrderStatus, PlaceOrder, workflow_id_for
from infra.orders import create_order
from infra.settings import Settings
from observability import tracing
from observability.metrics import metrics
from orchestrator import search_attributes
from orchestrator.workflow import CANCEL_REFUSED, OrderWorkflow

log = logging.getLogger(__name__)


async def connect_temporal(
    settings: Settings, *, wait_seconds: float = 60.0, runtime: Runtime | None = None
) -> Client:
    """Connect to Temporal, waiting up to `wait_seconds` for a server that is still starting.

    With tracing on, the client (and every worker built on it) carries OpenTelemetry's interceptor, so an
    order's trace runs from the API through the workflow into its activities. `runtime`: a Temporal
    runtime of the caller's (the worker's serves the SDK metrics).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                interceptors=tracing.temporal_interceptors(),
                runtime=runtime,
            )
        except RuntimeError as err:
            if loop.time() >= deadline:
                raise RuntimeError(f"Temporal is not reachable at {settings.temporal_address}") from err
            log.info("waiting for Temporal at %s", settings.temporal_address)
            await asyncio.sleep(1.0)


async def start_saga(
    client: Client, task_queue: str, order_id: str, customer_id: str
) -> WorkflowHandle[OrderWorkflow, OrderSagaResult]:
    """Start the order's saga, or return the one already running or finished: never two."""
    workflow_id = workflow_id_for(order_id)
    try:
        return await client.start_workflow(
            OrderWorkflow.run,
            OrderSagaInput(order_id=order_id, customer_id=customer_id),
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search_attributes.ORDER_STATUS, OrderStatus.PLACED),
                    SearchAttributePair(search_attributes.CUSTOMER_ID, customer_id),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle_for(OrderWorkflow.run, workflow_id)


async def place_order(
    session_factory: async_sessionmaker[AsyncSession],
    client: Client,
    task_queue: str,
    command: PlaceOrder,
) -> WorkflowHandle[OrderWorkflow, OrderSagaResult]:
    """Record the order, then start its saga. Safe to repeat: a retry after a crash between the
    two steps starts the missing saga, a plain duplicate changes nothing."""
    if await create_order(session_factory, command):
        metrics().orders_placed.inc()
    return await start_saga(client, task_queue, command.order_id, command.customer_id)


async def request_cancel(client: Client, order_id: str, reason: str) -> CancelOutcome:
    """Ask the saga to cancel. Refused (accepted=False) once shipping has started or it has ended."""
    handle = client.get_workflow_handle_for(OrderWorkflow.run, workflow_id_for(order_id))
    try:
        return await handle.execute_update(OrderWorkflow.cancel, CancelRequest(reason=reason))
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == CANCEL_REFUSED:
            status = OrderStatus(cause.details[0]) if cause.details else OrderStatus.SHIPPED
            return CancelOutcome(accepted=False, status=status, reason=cause.message)
        raise
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        # The saga has ended (or never existed, which raises from the query): too late to cancel.
        state = await handle.query(OrderWorkflow.status)
        return CancelOutcome(
            accepted=False, status=state.status, reason=f"the order is already {state.status}"
        )
