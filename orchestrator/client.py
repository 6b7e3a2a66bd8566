"""Client side of the saga: connect, place an order (row + saga), follow it, cancel it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

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
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from activities.messages import CancelOutcome, CancelRequest, OrderSagaInput, OrderSagaResult, SagaLine
from domain.model import Money, OrderStatus, PlaceOrder, RequestedItem, workflow_id_for
from infra.orders import create_order
from infra.settings import Settings
from observability import tracing
from observability.metrics import metrics
from orchestrator import search_attributes
from orchestrator.workflow import CANCEL_REFUSED, OrderWorkflow

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TemporalConnection:
    """Where and how to reach Temporal: the arguments of `Client.connect`, built from Settings only.

    `tls`: False (plain), True (TLS with the system's CAs) or a TLSConfig (own CA, mTLS, server name).
    `api_key`: sent as `authorization: Bearer <key>` (Temporal Cloud); never logged.
    """

    target_host: str
    namespace: str
    # Out of the repr: a TLSConfig's repr shows the client's private key.
    tls: bool | TLSConfig = dataclasses.field(repr=False)
    api_key: str | None = dataclasses.field(repr=False)


def temporal_connection(settings: Settings) -> TemporalConnection:
    """The connection every process uses (API, worker, timeline, CLI): Settings' TEMPORAL_* only.

    Reads the PEM files named by the *_PATH settings. Raises OSError when one cannot be read.
    """
    tls: bool | TLSConfig = settings.temporal_uses_tls
    ca = _pem(settings.temporal_tls_server_ca_cert_path, settings.temporal_tls_server_ca_cert_data)
    cert = _pem(settings.temporal_tls_client_cert_path, settings.temporal_tls_client_cert_data)
    key_data = settings.temporal_tls_client_key_data
    key = _pem(settings.temporal_tls_client_key_path, key_data.get_secret_value() if key_data else None)
    if ca or cert or settings.temporal_tls_server_name:
        tls = TLSConfig(
            server_root_ca_cert=ca,
            domain=settings.temporal_tls_server_name,
            client_cert=cert,
            client_private_key=key,
        )
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return TemporalConnection(settings.temporal_address, settings.temporal_namespace, tls, api_key)


def _pem(path: Path | None, data: str | None) -> bytes | None:
    if path is not None:
        return path.read_bytes()
    return data.encode() if data is not None else None


async def connect_temporal(
    settings: Settings, *, wait_seconds: float = 60.0, runtime: Runtime | None = None
) -> Client:
    """Connect to Temporal, waiting up to `wait_seconds` for a server that is still starting.

    The address, namespace, TLS (own CA, mTLS, server name) and API key come from `temporal_connection`.
    With tracing on, the client (and every worker built on it) carries OpenTelemetry's interceptor, so an
    order's trace runs from the API through the workflow into its activities. `runtime`: a Temporal
    runtime of the caller's (the worker's serves the SDK metrics). Raises RuntimeError when Temporal cannot
    be reached (or the TLS handshake fails) until the deadline.
    """
    connection = temporal_connection(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        try:
            return await Client.connect(
                connection.target_host,
                namespace=connection.namespace,
                tls=connection.tls,
                api_key=connection.api_key,
                interceptors=tracing.temporal_interceptors(),
                runtime=runtime,
            )
        except RuntimeError as err:
            if loop.time() >= deadline:
                raise RuntimeError(f"Temporal is not reachable at {settings.temporal_address}") from err
            log.info("waiting for Temporal at %s", settings.temporal_address)
            await asyncio.sleep(1.0)


def console_order_url(public_url: str, order_id: str) -> str:
    """The order's page in the operator console: `<API_PUBLIC_URL>/console/orders/<order id>`."""
    return f"{public_url.rstrip('/')}/console/orders/{order_id}"


async def start_saga(
    client: Client,
    task_queue: str,
    order_id: str,
    customer_id: str,
    *,
    items: Iterable[RequestedItem] = (),
    total: Money | None = None,
    console_url: str | None = None,
) -> WorkflowHandle[OrderWorkflow, OrderSagaResult]:
    """Start the order's saga, or return the one already running or finished: never two.

    `items`, `total` (the priced order's) and `console_url` (`console_order_url`) are what the Temporal Web
    UI shows of the saga (activity summaries, current details); without them it shows the step names.
    """
    workflow_id = workflow_id_for(order_id)
    saga = OrderSagaInput(
        order_id=order_id,
        customer_id=customer_id,
        lines=tuple(SagaLine(item.sku, item.quantity) for item in items),
        total=total.amount if total is not None else None,
        currency=total.currency if total is not None else None,
        console_url=console_url,
    )
    try:
        return await client.start_workflow(
            OrderWorkflow.run,
            saga,
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
    *,
    public_url: str | None = None,
) -> WorkflowHandle[OrderWorkflow, OrderSagaResult]:
    """Record the order, then start its saga. Safe to repeat: a retry after a crash between the
    two steps starts the missing saga, a plain duplicate changes nothing.

    `public_url` (API_PUBLIC_URL): the saga links the order's console page from the Web UI."""
    total = await create_order(session_factory, command)
    if total is not None:
        metrics().orders_placed.inc()
    return await start_saga(
        client,
        task_queue,
        command.order_id,
        command.customer_id,
        items=command.items,
        total=total,
        console_url=console_order_url(public_url, command.order_id) if public_url else None,
    )


async def request_cancel(client: Client, order_id: str, reason: str) -> CancelOutcome:
    """Ask the saga to cancel. Refused (accepted=False) once shipping has started or it has ended."""
    handle = client.get_workflow_handle(workflow_id_for(order_id), result_type=OrderSagaResult)
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
