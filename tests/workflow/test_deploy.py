"""A deploy of a changed OrderWorkflow while sagas run: started on the old code, finished on the new.

The old worker runs the frozen previous version (`previous_workflow.py`, registered as
`OrderWorkflow`, as it was in production). Sagas are held inside a step, the old worker is stopped
mid-flight, a worker with the current code takes the same task queue, and every order must end
right: shipped, failed, cancelled by the customer (accepted by the old code), cancelled as a
workflow after the swap, and one whose unwind had already begun on the old code.

The steps are held by an activity worker that stays up across the swap: this test is about the
workflow code changing under running sagas. Activities in flight on a worker that goes away are
covered by test_durability.py (the worker killed mid-charge).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Replayer

from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from orchestrator.client import place_order, request_cancel
from orchestrator.workflow import CANCEL_SAFE_UNWIND, OrderWorkflow
from tests.conftest import SagaHarness
from tests.support import add_product, order_command
from tests.workflow.closing import Expected, assert_closed_right, saga_worker, workflow_outcome
from tests.workflow.gates import Gate
from tests.workflow.holds import CancelWatch, patches_recorded
from tests.workflow.previous_workflow import PreviousOrderWorkflow

pytestmark = pytest.mark.workflow

REFUND_RELEASE = ("refund_payment", "release_inventory")
ALL_THREE = ("cancel_shipment", "refund_payment", "release_inventory")


@dataclass(frozen=True)
class InFlight:
    token: str
    country: str
    held_in: str  # the step it waits in when the old worker stops
    expected: Expected
    # Whether the new code takes the saga's deciding step (records the patch). A saga whose unwind
    # began on the old code finishes on the old branch, as its history demands.
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


async def test_sagas_started_on_the_previous_code_finish_right_on_the_new_worker(
    saga_harness: SagaHarness,
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
        async with saga_worker(harness, workflows=[PreviousOrderWorkflow], workflows_only=True):
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
        assert (CANCEL_SAFE_UNWIND in patches_recorded(history)) == saga.decided_on_new_code, name
        # The mixed history (old code, then new) replays on the current code.
        replayer = Replayer(workflows=[OrderWorkflow])
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=True)
        assert replayed.replay_failure is None, name
