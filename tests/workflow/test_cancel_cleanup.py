"""Issue 11.1: a workflow cancel that lands while the saga cleans up must not leave the order stuck.

The two reproductions of the issue, step by step as reported (PostgreSQL, a table lock held by
another session, `temporal workflow cancel`, then the lock released). Before the fix the first left
the order COMPENSATING without its OrderCancelled event, the second left it INVENTORY_RESERVED
with 3 units reserved for good.
"""

from __future__ import annotations

import pytest

from activities.payments import PaymentActivities
from domain.model import OrderStatus
from orchestrator.client import place_order, request_cancel
from tests.conftest import SagaHarness
from tests.support import add_product, order_command, order_snapshot
from tests.workflow.closing import Expected, assert_closed_right, saga_worker, workflow_outcome
from tests.workflow.gates import Gate
from tests.workflow.holds import CancelWatch, TableLock

pytestmark = pytest.mark.workflow


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_workflow_cancel_while_a_compensation_waits_on_a_table_lock(saga_harness: SagaHarness) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    charge = Gate(PaymentActivities(harness.database.sessions, harness.gateway).charge_payment)
    watch = CancelWatch()
    command = order_command(items={"SKU-A": 2}, token="tok_ok")
    products = TableLock(harness.settings.database_url, "products")

    async with saga_worker(harness, replace=[charge.activity()], runner=watch.runner()):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await charge.wait_entered()
        # POST /orders/{id}/cancel while the charge runs: 202.
        assert (await request_cancel(harness.client, command.order_id, "changed my mind")).accepted
        # Another session: LOCK TABLE products IN EXCLUSIVE MODE (a slow migration does the same).
        await products.acquire()
        try:
            charge.open()
            await products.wait_blocked()  # the saga is compensating: release_inventory waits
            await handle.cancel()  # temporal workflow cancel -w order-<id>
            await watch.wait_applied(handle.id)
        finally:
            await products.release()
        await workflow_outcome(handle)
        later = await request_cancel(harness.client, command.order_id, "again")

    assert not later.accepted and later.status.is_terminal, later
    await assert_closed_right(
        harness,
        handle,
        command.order_id,
        Expected("CANCELLED", "CUSTOMER_CANCELLED", ("refund_payment", "release_inventory")),
        stock={"SKU-A": (5, 2)},
    )


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_workflow_cancel_while_recording_compensating_waits_on_a_table_lock(
    saga_harness: SagaHarness,
) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    charge = Gate(PaymentActivities(harness.database.sessions, harness.gateway).charge_payment)
    watch = CancelWatch()
    command = order_command(items={"SKU-A": 3}, token="tok_declined")
    history = TableLock(harness.settings.database_url, "order_status_history")

    async with saga_worker(harness, replace=[charge.activity()], runner=watch.runner()):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await charge.wait_entered()
        snapshot = await order_snapshot(harness.database.sessions, command.order_id)
        assert snapshot["status"] == OrderStatus.INVENTORY_RESERVED
        # Once it is INVENTORY_RESERVED: LOCK TABLE order_status_history IN EXCLUSIVE MODE.
        await history.acquire()
        try:
            charge.open()  # declined: the saga unwinds, recording COMPENSATING waits on the lock
            await history.wait_blocked()
            await handle.cancel()
            await watch.wait_applied(handle.id)
        finally:
            await history.release()
        await workflow_outcome(handle)

    await assert_closed_right(
        harness,
        handle,
        command.order_id,
        Expected("FAILED", "PAYMENT_DECLINED", ("refund_payment", "release_inventory")),
        stock={"SKU-A": (5, 3)},
    )
