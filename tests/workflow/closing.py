"""What every saga must leave behind, checked from the database; and workers built the way a test needs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker, WorkflowRunner

from activities.messages import OrderSagaResult
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1
from entrypoints.bootstrap import saga_activities
from messaging.models import OutboxEvent
from orchestrator.workflow import OrderWorkflow
from tests.conftest import SagaHarness, activity_name
from tests.support import order_snapshot, product

# The steps every version runs as local activities: executed by the worker that runs the workflow. The
# reserve is local since patch lean-saga, remote before: `activities_only` workers keep it for old sagas.
LOCAL_STEPS = frozenset({"mark_order_shipped", "mark_order_status", "close_order"})


def saga_worker(
    harness: SagaHarness,
    *,
    replace: Sequence[Callable[..., Any]] = (),
    workflows: Sequence[type] = (OrderWorkflow,),
    runner: WorkflowRunner | None = None,
    workflows_only: bool = False,
    activities_only: bool = False,
    max_cached_workflows: int | None = None,
) -> Worker:
    """A worker on the harness's task queue, optionally split in a workflow part and an activity part.

    `workflows_only`: the workflow and its local steps, polling no (remote) activity tasks;
    `activities_only`: the remote steps and compensations only. `replace` swaps in activities of
    the same names (gates).
    """
    activities = {
        activity_name(fn): fn
        for fn in saga_activities(
            harness.settings, harness.database.sessions, gateway=harness.gateway, carrier=harness.carrier
        )
    }
    activities.update({activity_name(fn): fn for fn in replace})
    if activities_only:
        activities = {name: fn for name, fn in activities.items() if name not in LOCAL_STEPS}
    options: dict[str, Any] = {}
    if runner is not None:
        options["workflow_runner"] = runner
    if max_cached_workflows is not None:
        options["max_cached_workflows"] = max_cached_workflows
    return Worker(
        harness.client,
        task_queue=harness.task_queue,
        workflows=[] if activities_only else list(workflows),
        activities=list(activities.values()),
        no_remote_activities=workflows_only,
        graceful_shutdown_timeout=timedelta(seconds=5),
        **options,
    )


async def outbox_events(harness: SagaHarness, order_id: str) -> list[str]:
    """The event types in the outbox for one order."""
    async with harness.database.sessions() as session:
        types = await session.scalars(select(OutboxEvent.event_type).where(OutboxEvent.subject == order_id))
        return list(types.all())


async def workflow_outcome(
    handle: WorkflowHandle[Any, OrderSagaResult], within: float = 60
) -> OrderSagaResult | None:
    """The saga's result, or None when the workflow ended CANCELED (a cancel it honoured)."""
    try:
        return await asyncio.wait_for(handle.result(), within)
    except WorkflowFailureError as failure:
        assert isinstance(failure.cause, CancelledError), failure.cause
        return None


@dataclass(frozen=True)
class Expected:
    """How a saga must end: final status and reason (None for SHIPPED) and the compensations run."""

    status: str
    reason: str | None = None
    compensations: tuple[str, ...] = ()

    @property
    def shipped(self) -> bool:
        return self.status == "SHIPPED"


async def assert_closed_right(
    harness: SagaHarness,
    handle: WorkflowHandle[Any, OrderSagaResult],
    order_id: str,
    expected: Expected,
    *,
    stock: dict[str, tuple[int, int]],
) -> dict[str, object]:
    """The workflow is closed and the order ended as expected, with nothing left behind.

    `stock` maps each SKU to (on hand before the order, quantity ordered). Checks: the workflow is
    closed; the order row is terminal with its reason; reserved stock is back to 0 (on hand less
    the quantity only if it shipped); a charge is refunded unless the order shipped; exactly one
    event is in the outbox; the compensations are recorded in the order's status history and event.
    """
    description = await handle.describe()
    assert description.status in (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CANCELED)
    snapshot = await order_snapshot(harness.database.sessions, order_id)
    assert (snapshot["status"], snapshot["failure_reason"]) == (expected.status, expected.reason), snapshot
    for sku, (on_hand, quantity) in stock.items():
        row = await product(harness.database.sessions, sku)
        assert (row.on_hand, row.reserved) == (on_hand - quantity if expected.shipped else on_hand, 0), sku
    payments: list[tuple[str, int, str]] = snapshot["payments"]  # type: ignore[assignment]
    charged = [amount for kind, amount, status in payments if kind == "charge" and status == "succeeded"]
    refunded = [amount for kind, amount, status in payments if kind == "refund" and status == "succeeded"]
    # What the payment provider did for this order (its idempotency keys start with the order id).
    provider_charges = {key for key in harness.gateway.charges if key.startswith(f"{order_id}:")}
    provider_refunds = {key for key in harness.gateway.refunds if key.startswith(f"{order_id}:")}
    if expected.shipped:
        assert len(charged) == 1 and refunded == [], payments
        assert len(provider_charges) == 1 and provider_refunds == set()
    else:
        assert refunded == charged, payments  # refunded, or never charged
        assert provider_charges == {key.replace(":refund", ":charge") for key in provider_refunds}
        shipments: list[tuple[str, str]] = snapshot["shipments"]  # type: ignore[assignment]
        assert all(status == "cancelled" for status, _ in shipments), shipments
    history: list[str] = snapshot["history"]  # type: ignore[assignment]
    if expected.shipped:
        assert history == ["PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "SHIPPED"], history
        assert await outbox_events(harness, order_id) == [ORDER_SHIPPED_V1.type]
    else:
        assert history[-2:] == ["COMPENSATING", expected.status], history
        assert len(history) == len(set(history)), history
        assert await outbox_events(harness, order_id) == [ORDER_CANCELLED_V1.type]
        async with harness.database.sessions() as session:
            event = await session.scalar(select(OutboxEvent.envelope).where(OutboxEvent.subject == order_id))
        assert event is not None
        data = event["data"]
        assert (data["final_status"], data["reason"]) == (expected.status, expected.reason), data
        assert tuple(data["compensations"]) == expected.compensations, data
    return snapshot
