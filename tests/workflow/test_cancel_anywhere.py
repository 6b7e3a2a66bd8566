"""A workflow cancel at any point of the saga ends with a closed order and nothing left behind.

Issue 11.1's kind, covered systematically, on SQLite and PostgreSQL:

- *inside* every step, every compensation and every local step: the saga is held there (on
  PostgreSQL by a table the step writes, locked EXCLUSIVE by another session, as a slow migration
  would; on SQLite by a gate that waits on an event), the workflow is cancelled, the worker applies
  the cancel, then the hold is released;
- *at* every step boundary: the workflow part of the worker is stopped while a step runs, the step
  ends, the workflow is cancelled, and the restarted worker gets the step's end and the cancel in
  one workflow task;
- the reserve is a local step (patch `lean-saga`), run by the worker that runs the saga while it holds
  the workflow task: a cancel inside it (above) reaches the saga at the worker's workflow-task heartbeat
  (8 s) and cuts it short; a cancel sent just before it ends (its boundary) reaches the saga right after.

Each case then checks the invariants (`closing.assert_closed_right`): workflow closed, order row
terminal with its reason, reserved stock back to 0, a charge refunded (or never made), exactly one
event in the outbox, the compensations recorded. The workflow ends CANCELED exactly when the
workflow cancel is what closed the order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from activities.inventory import InventoryActivities
from activities.messages import OrderSagaResult
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from domain.model import PlaceOrder
from orchestrator.client import place_order, request_cancel
from tests.conftest import HistoryRecorder, SagaHarness
from tests.support import add_product, order_command
from tests.workflow.closing import Expected, assert_closed_right, saga_worker, workflow_outcome
from tests.workflow.gates import Gate
from tests.workflow.holds import CancelWatch, TableLock, wait_for_history_event

pytestmark = pytest.mark.workflow

ON_HAND = 5
RELEASE = ("release_inventory",)
REFUND_RELEASE = ("refund_payment", "release_inventory")
ALL_THREE = ("cancel_shipment", "refund_payment", "release_inventory")


def cancelled(compensations: tuple[str, ...]) -> Expected:
    return Expected("CANCELLED", "WORKFLOW_CANCELLED", compensations)


def steps_of(harness: SagaHarness) -> dict[str, Any]:
    """Every step, compensation and local step of the saga, by activity name."""
    sessions = harness.database.sessions
    inventory = InventoryActivities(sessions)
    payments = PaymentActivities(sessions, harness.gateway)
    shipping = ShippingActivities(sessions, harness.carrier)
    orders = OrderActivities(sessions)
    return {
        "reserve_inventory": inventory.reserve_inventory,
        "release_inventory": inventory.release_inventory,
        "charge_payment": payments.charge_payment,
        "refund_payment": payments.refund_payment,
        "create_shipment": shipping.create_shipment,
        "cancel_shipment": shipping.cancel_shipment,
        "mark_order_shipped": orders.mark_order_shipped,
        "mark_order_status": orders.mark_order_status,
        "close_order": orders.close_order,
    }


@dataclass(frozen=True)
class Inside:
    """The workflow cancel arrives while `hold` runs.

    `table`: what `hold` writes, locked on PostgreSQL to hold it. `lock_while`: a step held (before
    it runs) while that lock is taken, because something earlier writes the same table (None: locked
    before the order is placed). `before` and `first`: something that happens first while `before` is held
    (a customer cancel, or a first workflow cancel, so that the last one is a repeated cancel).
    """

    hold: str
    table: str
    expected: Expected
    token: str = "tok_ok"
    country: str = "DE"
    lock_while: str | None = None
    before: str | None = None
    first: str | None = None


INSIDE = {
    # Placing the order takes a lock on products (the lines' foreign key): lock it once reserving began.
    "reserve_inventory": Inside(
        "reserve_inventory", "products", cancelled(RELEASE), lock_while="reserve_inventory"
    ),
    "charge_payment": Inside("charge_payment", "payments", cancelled(REFUND_RELEASE)),
    "create_shipment": Inside("create_shipment", "shipments", cancelled(ALL_THREE)),
    # The closing write of a shipped order: the cancel is too late, the order ships.
    "mark_order_shipped": Inside("mark_order_shipped", "outbox_events", Expected("SHIPPED")),
    # Unwinding after a declined charge: recording COMPENSATING (the variant).
    "mark_order_status": Inside(
        "mark_order_status",
        "order_status_history",
        Expected("FAILED", "PAYMENT_DECLINED", REFUND_RELEASE),
        token="tok_declined",
        lock_while="charge_payment",
    ),
    # Unwinding after a first workflow cancel inside create_shipment; this one is a repeat.
    "cancel_shipment": Inside(
        "cancel_shipment",
        "shipments",
        cancelled(ALL_THREE),
        lock_while="mark_order_status",
        before="create_shipment",
        first="workflow_cancel",
    ),
    # Unwinding after the carrier refused: the refund.
    "refund_payment": Inside(
        "refund_payment",
        "payments",
        Expected("FAILED", "SHIPPING_UNAVAILABLE", ALL_THREE),
        country="ZZ",
        lock_while="create_shipment",
    ),
    # Unwinding after a customer cancel accepted during the charge (the first case).
    "release_inventory": Inside(
        "release_inventory",
        "products",
        Expected("CANCELLED", "CUSTOMER_CANCELLED", REFUND_RELEASE),
        lock_while="charge_payment",
        before="charge_payment",
        first="customer_cancel",
    ),
    # Unwinding after a declined charge: the closing write with its event.
    "close_order": Inside(
        "close_order",
        "outbox_events",
        Expected("FAILED", "PAYMENT_DECLINED", REFUND_RELEASE),
        token="tok_declined",
    ),
}


@pytest.mark.parametrize("case", list(INSIDE), ids=[f"inside-{name}" for name in INSIDE])
async def test_a_workflow_cancel_inside_any_step_ends_clean(
    saga_harness: SagaHarness, db_backend: str, case: str, record_history: HistoryRecorder
) -> None:
    harness, inside = saga_harness, INSIDE[case]
    steps = steps_of(harness)
    gates: dict[str, Gate] = {}
    for name in (inside.before, inside.lock_while if db_backend == "postgresql" else inside.hold):
        if name is not None and name not in gates:
            gates[name] = Gate(steps[name])
    lock = TableLock(harness.settings.database_url, inside.table) if db_backend == "postgresql" else None
    watch = CancelWatch()
    await add_product(harness.database.sessions, "SKU-A", on_hand=ON_HAND)
    command = order_command(items={"SKU-A": 2}, token=inside.token, country=inside.country)

    held = [gate.activity() for gate in gates.values()]
    async with saga_worker(harness, replace=held, runner=watch.runner()):
        try:
            async with asyncio.timeout(120):  # a hold that never lets go fails the test, not the run
                handle = await cancel_inside(harness, inside, command, gates, lock, watch)
        finally:
            if lock is not None:
                await lock.release()
            for gate in gates.values():
                gate.open()
        await workflow_outcome(handle)
    await record_history(handle, f"cancel_inside_{case}")

    await assert_closed_right(
        harness, handle, command.order_id, inside.expected, stock={"SKU-A": (ON_HAND, 2)}
    )
    await assert_ended_as_asked(handle, inside.expected)


async def cancel_inside(
    harness: SagaHarness,
    inside: Inside,
    command: PlaceOrder,
    gates: dict[str, Gate],
    lock: TableLock | None,
    watch: CancelWatch,
) -> WorkflowHandle[Any, OrderSagaResult]:
    """Place the order, hold the saga inside `inside.hold`, cancel the workflow (the caller releases)."""
    if lock is not None and inside.lock_while is None:
        await lock.acquire()
    handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
    if inside.before is not None:
        await gates[inside.before].wait_entered()
        if inside.first == "customer_cancel":
            outcome = await request_cancel(harness.client, command.order_id, "changed my mind")
            assert outcome.accepted
        else:
            await handle.cancel()
            await watch.wait_applied(handle.id)
        if lock is None or inside.lock_while != inside.before:
            gates[inside.before].open()
    if lock is not None and inside.lock_while is not None:
        await gates[inside.lock_while].wait_entered()
        await lock.acquire()
        gates[inside.lock_while].open()
    # The saga is inside `hold` now, and stays there until released.
    if lock is not None:
        await lock.wait_blocked()
    else:
        await gates[inside.hold].wait_entered()
    await handle.cancel()
    if inside.first != "workflow_cancel":  # a repeated cancel is a no-op on the server
        await watch.wait_applied(handle.id)
    return handle


@dataclass(frozen=True)
class Boundary:
    """The workflow cancel arrives together with the end of `after` (None: before the first step)."""

    after: str | None
    expected: Expected
    token: str = "tok_ok"
    country: str = "DE"
    failed: bool = False  # `after` ends in a (business) failure


BOUNDARIES = {
    "before-reserve": Boundary(None, cancelled(RELEASE)),
    # reserve-charge: the reserve is a local step, see test_a_workflow_cancel_as_the_local_reserve_ends.
    "charge-ship": Boundary("charge_payment", cancelled(REFUND_RELEASE)),
    "ship-mark_shipped": Boundary("create_shipment", cancelled(ALL_THREE)),
    # The charge is declined and the workflow cancelled in the same workflow task: the SDK hands
    # the cancel to the workflow (not the step's outcome), so the cancel is what closes the order.
    "declined-unwind": Boundary(
        "charge_payment", cancelled(REFUND_RELEASE), token="tok_declined", failed=True
    ),
    # Between two compensations (the carrier refused; the refund is done, the release is next).
    "refund-release": Boundary(
        "refund_payment", Expected("FAILED", "SHIPPING_UNAVAILABLE", ALL_THREE), country="ZZ"
    ),
}


@pytest.mark.parametrize("case", list(BOUNDARIES), ids=[f"at-{name}" for name in BOUNDARIES])
async def test_a_workflow_cancel_at_any_step_boundary_ends_clean(
    saga_harness: SagaHarness, case: str, record_history: HistoryRecorder
) -> None:
    harness, boundary = saga_harness, BOUNDARIES[case]
    gate = Gate(steps_of(harness)[boundary.after]) if boundary.after else None
    await add_product(harness.database.sessions, "SKU-A", on_hand=ON_HAND)
    command = order_command(items={"SKU-A": 2}, token=boundary.token, country=boundary.country)

    def workflow_part() -> Any:
        # No cache: a stopped workflow worker leaves no sticky queue behind; the next one replays.
        return saga_worker(harness, workflows_only=True, max_cached_workflows=0)

    async with saga_worker(harness, activities_only=True, replace=[gate.activity()] if gate else []):
        if gate is None:
            handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
            await handle.cancel()
            ended = 0
        else:
            async with workflow_part():
                handle = await place_order(
                    harness.database.sessions, harness.client, harness.task_queue, command
                )
                await gate.wait_entered()
            gate.open()  # the step ends while no worker runs the workflow
            ended = await wait_for_activity_end(handle, boundary.after, failed=boundary.failed)
            await handle.cancel()
        async with workflow_part():
            await workflow_outcome(handle)
    await record_history(handle, f"cancel_at_{case.replace('-', '_')}")

    # The step's end and the cancel reached the workflow in the same workflow task.
    history = await handle.fetch_history()
    cancel_requested = next(
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    )
    assert not [
        event
        for event in history.events
        if ended < event.event_id < cancel_requested
        and event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    await assert_closed_right(
        harness, handle, command.order_id, boundary.expected, stock={"SKU-A": (ON_HAND, 2)}
    )
    await assert_ended_as_asked(handle, boundary.expected)


async def test_a_workflow_cancel_as_the_local_reserve_ends_ends_clean(
    saga_harness: SagaHarness, record_history: HistoryRecorder
) -> None:
    # The server has recorded the cancel (handle.cancel() returned) while the worker holds the workflow task
    # for the local reserve (it shows in the history after that task, the server buffers it); the reserve
    # then ends at once, so the saga sees the cancel in the next workflow task, the charge scheduled.
    harness = saga_harness
    gate = Gate(steps_of(harness)["reserve_inventory"])
    await add_product(harness.database.sessions, "SKU-A", on_hand=ON_HAND)
    command = order_command(items={"SKU-A": 2})
    expected = cancelled(REFUND_RELEASE)

    async with saga_worker(harness, replace=[gate.activity()]):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await gate.wait_entered()
        await handle.cancel()
        gate.open()
        await workflow_outcome(handle)
    await record_history(handle, "cancel_at_reserve_charge")

    await assert_closed_right(harness, handle, command.order_id, expected, stock={"SKU-A": (ON_HAND, 2)})
    await assert_ended_as_asked(handle, expected)


async def wait_for_activity_end(handle: WorkflowHandle[Any, Any], name: str | None, *, failed: bool) -> int:
    """Until the activity `name` has completed (or failed) in the history; the id of that event."""
    scheduled = {
        event.event_id
        for event in (await handle.fetch_history()).events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == name
    }
    assert len(scheduled) == 1, scheduled
    end = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    if failed:
        end = EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    return await wait_for_history_event(handle, end, after=max(scheduled))


async def assert_ended_as_asked(handle: WorkflowHandle[Any, Any], expected: Expected) -> None:
    """CANCELED when the workflow cancel is what closed the order; COMPLETED otherwise."""
    status = (await handle.describe()).status
    if expected.reason == "WORKFLOW_CANCELLED":
        assert status == WorkflowExecutionStatus.CANCELED
    else:
        assert status == WorkflowExecutionStatus.COMPLETED
