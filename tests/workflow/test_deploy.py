"""A deploy of a changed OrderWorkflow while sagas run: started on the old code, finished on the new.

The old worker runs a frozen previous version (`previous/v<N>.py`, registered as `OrderWorkflow`, as
it was in production): version 2 (before patch `lean-saga`, the deploy at hand) and version 1 (before
`cancel-safe-unwind`). Sagas are held inside a step, the old worker is stopped mid-flight, a worker
with the current code takes the same task queue, and every order must end right: shipped, failed,
cancelled by the customer (accepted by the old code), cancelled as a workflow after the swap, and one
whose unwind had already begun on the old code.

The reverse (a rollback: sagas started on the current code handed to a version-2 worker) is not
valid: the old code cannot replay a saga that took `lean-saga`. The test shows what happens then:
the old worker fails those workflow tasks and does nothing else, and once a current worker is back the
sagas finish right.

The steps are held by an activity worker that stays up across the swap: this test is about the
workflow code changing under running sagas. Activities in flight on a worker that goes away are
covered by test_durability.py (the worker killed mid-charge).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHistory
from temporalio.worker import Replayer

from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from orchestrator.client import place_order, request_cancel
from orchestrator.workflow import CANCEL_SAFE_UNWIND, LEAN_SAGA, OrderWorkflow
from tests.conftest import SagaHarness
from tests.support import add_product, order_command
from tests.workflow.closing import Expected, assert_closed_right, saga_worker, workflow_outcome
from tests.workflow.gates import Gate
from tests.workflow.holds import CancelWatch, patches_recorded, wait_for_history_event
from tests.workflow.previous import v1, v2

pytestmark = pytest.mark.workflow

REFUND_RELEASE = ("refund_payment", "release_inventory")
ALL_THREE = ("cancel_shipment", "refund_payment", "release_inventory")


@dataclass(frozen=True)
class InFlight:
    token: str
    country: str
    held_in: str  # the step it waits in when the old worker stops
    expected: Expected
    # Whether the new code takes the saga's deciding step (records patch cancel-safe-unwind, coming
    # from version 1). A saga whose unwind began on the old code finishes on the old branch, as its
    # history demands.
    decided_on_new_code: bool = True


SAGAS = {
    "ships": InFlight("tok_ok", "DE", "charge_payment", Expected("SHIPPED")),
    "declined": InFlight(
        "tok_declined", "DE", "charge_payment", Expected("FAILED", "PAYMENT_DECLINED", REFUND_RELEASE)
    ),
    "customer-cancel": InFlight(
        "tok_ok", "DE", "charge_payment", Expected("CANCELLED", "CUSTOMER_CANCELLED", REFUND_RELEASE)
    ),
    "carrier-refused": InFlight(
        "tok_ok", "ZZ", "create_shipment", Expected("FAILED", "SHIPPING_UNAVAILABLE", ALL_THREE)
    ),
    "workflow-cancel": InFlight(
        "tok_ok", "DE", "charge_payment", Expected("CANCELLED", "WORKFLOW_CANCELLED", REFUND_RELEASE)
    ),
    "unwinding": InFlight(
        "tok_declined",
        "DE",
        "refund_payment",
        Expected("FAILED", "PAYMENT_DECLINED", REFUND_RELEASE),
        decided_on_new_code=False,
    ),
}


# The frozen code of each earlier version, and the patches a saga started on it and finished on the
# current code records: lean-saga never (decided at the start, on the old code); cancel-safe-unwind
# as version 2 recorded it, or, from version 1, when the saga decides how to end on the new code.
PREVIOUS = {"v1": v1.PreviousOrderWorkflow, "v2": v2.PreviousOrderWorkflow}


def expected_patches(version: str, saga: InFlight) -> set[str]:
    if version == "v2" or saga.decided_on_new_code:
        return {CANCEL_SAFE_UNWIND}
    return set()


@pytest.mark.parametrize("version", list(PREVIOUS))
async def test_sagas_started_on_the_previous_code_finish_right_on_the_new_worker(
    saga_harness: SagaHarness, version: str
) -> None:
    harness = saga_harness
    commands = {}
    for name, saga in SAGAS.items():
        sku = f"SKU-{name.upper()}"
        await add_product(harness.database.sessions, sku, on_hand=5)
        commands[name] = order_command(items={sku: 2}, token=saga.token, country=saga.country)
    held = {
        step: {commands[name].order_id for name, saga in SAGAS.items() if saga.held_in == step}
        for step in ("charge_payment", "create_shipment", "refund_payment")
    }
    payments = PaymentActivities(harness.database.sessions, harness.gateway)
    shipping = ShippingActivities(harness.database.sessions, harness.carrier)
    gates = [
        Gate(payments.charge_payment, held["charge_payment"]),
        Gate(shipping.create_shipment, held["create_shipment"]),
        Gate(payments.refund_payment, held["refund_payment"]),
    ]
    watch = CancelWatch()

    activities = saga_worker(harness, activities_only=True, replace=[gate.activity() for gate in gates])
    async with activities:
        # The old worker: the previous version's code under the same workflow type name.
        async with saga_worker(harness, workflows=[PREVIOUS[version]], workflows_only=True):
            handles = {}
            for name, command in commands.items():
                handles[name] = await place_order(
                    harness.database.sessions, harness.client, harness.task_queue, command
                )
            for gate, orders in zip(gates, held.values(), strict=True):
                await gate.wait_entered(count=len(orders))
            customer = commands["customer-cancel"].order_id
            assert (await request_cancel(harness.client, customer, "no thanks")).accepted
        # The old worker is gone with every saga in flight; the new code takes the task queue.
        async with saga_worker(harness, workflows_only=True, runner=watch.runner()):
            cancelled = handles["workflow-cancel"]
            await cancelled.cancel()
            await watch.wait_applied(cancelled.id)
            for gate in gates:
                gate.open()
            await asyncio.gather(*(workflow_outcome(handle) for handle in handles.values()))

    for name, saga in SAGAS.items():
        handle, command = handles[name], commands[name]
        sku = f"SKU-{name.upper()}"
        await assert_closed_right(harness, handle, command.order_id, saga.expected, stock={sku: (5, 2)})
        status = (await handle.describe()).status
        cancelled_by_workflow = saga.expected.reason == "WORKFLOW_CANCELLED"
        assert status == (
            WorkflowExecutionStatus.CANCELED if cancelled_by_workflow else WorkflowExecutionStatus.COMPLETED
        ), name
        history = await handle.fetch_history()
        assert patches_recorded(history) == expected_patches(version, saga), name
        # The mixed history (old code, then new) replays on the current code.
        replayer = Replayer(workflows=[OrderWorkflow])
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=True)
        assert replayed.replay_failure is None, name


# About workflow code only: one database is enough.
@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_rollback_stalls_new_sagas_without_a_wrong_step_until_a_new_worker_is_back(
    saga_harness: SagaHarness,
) -> None:
    harness = saga_harness
    commands = {}
    for name, token in (("ships", "tok_ok"), ("declined", "tok_declined")):
        await add_product(harness.database.sessions, f"SKU-{name.upper()}", on_hand=5)
        commands[name] = order_command(items={f"SKU-{name.upper()}": 2}, token=token)
    gate = Gate(PaymentActivities(harness.database.sessions, harness.gateway).charge_payment)

    def current_worker() -> Any:
        # With its cache (no max_cached_workflows=0 here: a worker without one evicts a saga whose local
        # reserve runs when another needs the slot, and that workflow task times out after 10 s).
        return saga_worker(harness, workflows_only=True)

    async with saga_worker(harness, activities_only=True, replace=[gate.activity()]):
        async with current_worker():
            handles = {
                name: await place_order(
                    harness.database.sessions, harness.client, harness.task_queue, command
                )
                for name, command in commands.items()
            }
            await gate.wait_entered(count=len(commands))
        # Rolled back: a version-2 worker gets the sagas' next workflow task when their charge ends.
        async with saga_worker(harness, workflows=[v2.PreviousOrderWorkflow], workflows_only=True):
            gate.open()
            for handle in handles.values():
                await wait_for_history_event(handle, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
            stalled = {name: await handle.fetch_history() for name, handle in handles.items()}
        # The server retries a failed workflow task after 10 s (longer after more failures).
        async with current_worker():
            await asyncio.gather(*(workflow_outcome(handle) for handle in handles.values()))

    expected = {
        "ships": Expected("SHIPPED"),
        "declined": Expected("FAILED", "PAYMENT_DECLINED", ("refund_payment", "release_inventory")),
    }
    for name, handle in handles.items():
        # While stalled, nothing was scheduled after the charge: the old code took no step.
        assert last_scheduled(stalled[name]) == "charge_payment", name
        assert patches_recorded(stalled[name]) == {LEAN_SAGA}, name
        sku = f"SKU-{name.upper()}"
        await assert_closed_right(
            harness, handle, commands[name].order_id, expected[name], stock={sku: (5, 2)}
        )
        replayer = Replayer(workflows=[OrderWorkflow])
        replayed = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=True)
        assert replayed.replay_failure is None, name


def last_scheduled(history: WorkflowHistory) -> str:
    """The type of the last activity task the history scheduled."""
    scheduled = [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    return scheduled[-1]
