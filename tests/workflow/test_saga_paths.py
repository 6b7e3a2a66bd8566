"""Every path of the order saga against the real Temporal dev server and a real database."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError

from activities.inventory import InventoryActivities
from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from domain.model import OrderStatus
from orchestrator import search_attributes
from orchestrator.client import place_order, request_cancel
from orchestrator.workflow import OrderWorkflow
from tests.conftest import HistoryRecorder, SagaHarness
from tests.support import add_product, order_command, order_snapshot, product
from tests.workflow.gates import Gate
from tests.workflow.webui import activity_summaries, current_details, order_status_upserts

pytestmark = pytest.mark.workflow

RESULT_TIMEOUT = 30


async def test_happy_path_reserves_charges_ships(saga: SagaHarness, record_history: HistoryRecorder) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5, unit_price=1_000)
    await add_product(saga.database.sessions, "SKU-B", on_hand=5, unit_price=250)
    command = order_command(items={"SKU-A": 2, "SKU-B": 1})
    public_url = saga.settings.api_public_url

    handle = await place_order(
        saga.database.sessions, saga.client, saga.task_queue, command, public_url=public_url
    )
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "happy")

    assert result.status == OrderStatus.SHIPPED
    assert result.compensations_run == ()
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["status"] == "SHIPPED"
    assert snapshot["history"] == ["PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "SHIPPED"]
    assert snapshot["reservations"] == [("SKU-A", 2, "consumed"), ("SKU-B", 1, "consumed")]
    assert snapshot["payments"] == [("charge", 2_250, "succeeded")]
    assert [status for status, _ in snapshot["shipments"]] == ["created"]  # type: ignore[attr-defined]
    sku_a = await product(saga.database.sessions, "SKU-A")
    assert (sku_a.on_hand, sku_a.reserved) == (3, 0)
    state = await handle.query(OrderWorkflow.status)
    assert state.status == OrderStatus.SHIPPED
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(search_attributes.ORDER_STATUS) == "SHIPPED"
    assert attributes.get(search_attributes.CUSTOMER_ID) == command.customer_id
    # The Web UI in business terms: each step's summary, one status upsert (the outcome), a link back.
    history = await handle.fetch_history()
    assert activity_summaries(history) == [
        "reserve 2 x SKU-A, 1 x SKU-B",
        "charge 22.50 EUR",
        "ship 2 x SKU-A, 1 x SKU-B",
        "mark SHIPPED, consume the stock, record OrderShipped",
    ]
    assert order_status_upserts(history) == ["SHIPPED"]
    details = await current_details(handle)
    assert (
        f"`{command.order_id}` of customer `{command.customer_id}`: 2 x SKU-A, 1 x SKU-B, 22.50 EUR"
        in details
    )
    assert "**SHIPPED**" in details
    assert f"({public_url}/console/orders/{command.order_id})" in details


async def test_out_of_stock_charges_nothing(saga: SagaHarness, record_history: HistoryRecorder) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5)
    await add_product(saga.database.sessions, "SKU-SCARCE", on_hand=1)
    command = order_command(items={"SKU-A": 2, "SKU-SCARCE": 2})

    handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "out_of_stock")

    assert (result.status, result.failure_reason) == (OrderStatus.FAILED, "OUT_OF_STOCK")
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["status"] == "FAILED"
    assert snapshot["failure_reason"] == "OUT_OF_STOCK"
    assert snapshot["history"] == ["PLACED", "COMPENSATING", "FAILED"]
    assert snapshot["reservations"] == []  # the SKU-A reservation was rolled back with the failure
    assert snapshot["payments"] == []
    assert saga.gateway.charges == {}
    for sku, on_hand in (("SKU-A", 5), ("SKU-SCARCE", 1)):
        stock = await product(saga.database.sessions, sku)
        assert (stock.on_hand, stock.reserved) == (on_hand, 0)


async def test_payment_declined_releases_stock(saga: SagaHarness, record_history: HistoryRecorder) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 3}, token="tok_declined")

    handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "payment_declined")

    assert (result.status, result.failure_reason) == (OrderStatus.FAILED, "PAYMENT_DECLINED")
    assert result.compensations_run == ("refund_payment", "release_inventory")
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["history"] == ["PLACED", "INVENTORY_RESERVED", "COMPENSATING", "FAILED"]
    assert snapshot["reservations"] == [("SKU-A", 3, "released")]
    assert snapshot["payments"] == [("charge", 3_750, "declined")]
    assert saga.gateway.refunds == {}
    stock = await product(saga.database.sessions, "SKU-A")
    assert (stock.on_hand, stock.reserved) == (5, 0)
    history = await handle.fetch_history()
    assert activity_summaries(history) == [
        "reserve 3 x SKU-A",
        "charge 37.50 EUR",
        "record COMPENSATING",
        "refund 37.50 EUR",
        "release 3 x SKU-A",
        "close FAILED (PAYMENT_DECLINED), record OrderCancelled",
    ]
    assert order_status_upserts(history) == ["COMPENSATING", "FAILED"]
    details = await current_details(handle)
    assert "**FAILED**: PAYMENT_DECLINED" in details
    assert "undone: refund_payment, release_inventory" in details
    assert "console" not in details  # placed without the public URL: no link


async def test_shipping_unavailable_refunds_then_releases(
    saga: SagaHarness, record_history: HistoryRecorder
) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 1}, country="ZZ")

    handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "shipping_unavailable")

    assert (result.status, result.failure_reason) == (OrderStatus.FAILED, "SHIPPING_UNAVAILABLE")
    # Reverse order of registration: shipment (nothing to cancel), then refund, then release.
    assert result.compensations_run == ("cancel_shipment", "refund_payment", "release_inventory")
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["history"] == [
        "PLACED",
        "INVENTORY_RESERVED",
        "PAYMENT_CHARGED",
        "COMPENSATING",
        "FAILED",
    ]
    assert snapshot["payments"] == [("charge", 1_250, "succeeded"), ("refund", 1_250, "succeeded")]
    assert snapshot["reservations"] == [("SKU-A", 1, "released")]
    assert snapshot["shipments"] == []
    assert len(saga.gateway.refunds) == 1
    stock = await product(saga.database.sessions, "SKU-A")
    assert (stock.on_hand, stock.reserved) == (5, 0)


async def test_flaky_payment_is_retried_and_charged_once(
    saga: SagaHarness, record_history: HistoryRecorder
) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 1}, token="tok_flaky")

    handle = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "flaky_payment")

    assert result.status == OrderStatus.SHIPPED
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["payments"] == [("charge", 1_250, "succeeded")]
    assert len(saga.gateway.charges) == 1
    history = await handle.fetch_history()
    charge_attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert max(charge_attempts) == 3  # two transient failures, then success


async def test_placing_the_same_order_twice_runs_one_saga(saga: SagaHarness) -> None:
    await add_product(saga.database.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 1})

    first, second = await asyncio.gather(
        place_order(saga.database.sessions, saga.client, saga.task_queue, command),
        place_order(saga.database.sessions, saga.client, saga.task_queue, command),
    )
    await asyncio.wait_for(first.result(), RESULT_TIMEOUT)
    again = await place_order(saga.database.sessions, saga.client, saga.task_queue, command)

    assert first.id == second.id == again.id
    assert (await first.describe()).run_id == (await again.describe()).run_id
    runs = [w async for w in saga.client.list_workflows(f"WorkflowId = '{first.id}'")]
    assert len(runs) == 1
    snapshot = await order_snapshot(saga.database.sessions, command.order_id)
    assert snapshot["payments"] == [("charge", 1_250, "succeeded")]
    stock = await product(saga.database.sessions, "SKU-A")
    assert (stock.on_hand, stock.reserved) == (4, 0)


async def test_cancel_while_reserving_releases_stock(saga_harness: SagaHarness) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    gate = Gate(InventoryActivities(harness.database.sessions).reserve_inventory)
    command = order_command(items={"SKU-A": 2})

    async with harness.worker(replace=[gate.activity()]):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await gate.wait_entered()
        outcome = await request_cancel(harness.client, command.order_id, "changed my mind")
        gate.open()
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert outcome.accepted
    assert (result.status, result.failure_reason) == (OrderStatus.CANCELLED, "CUSTOMER_CANCELLED")
    snapshot = await order_snapshot(harness.database.sessions, command.order_id)
    assert snapshot["history"] == ["PLACED", "INVENTORY_RESERVED", "COMPENSATING", "CANCELLED"]
    assert snapshot["reservations"] == [("SKU-A", 2, "released")]
    assert snapshot["payments"] == []
    stock = await product(harness.database.sessions, "SKU-A")
    assert (stock.on_hand, stock.reserved) == (5, 0)


async def test_cancel_while_charging_refunds_and_releases(
    saga_harness: SagaHarness, record_history: HistoryRecorder
) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    gate = Gate(PaymentActivities(harness.database.sessions, harness.gateway).charge_payment)
    command = order_command(items={"SKU-A": 2})

    async with harness.worker(replace=[gate.activity()]):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await gate.wait_entered()
        assert (await current_details(handle)).endswith("**INVENTORY_RESERVED**: charging the payment")
        outcome = await request_cancel(harness.client, command.order_id, "found it cheaper")
        assert "charging the payment; cancel requested" in await current_details(handle)
        gate.open()
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "cancel_while_charging")

    assert outcome.accepted
    assert result.status == OrderStatus.CANCELLED
    assert result.compensations_run == ("refund_payment", "release_inventory")
    snapshot = await order_snapshot(harness.database.sessions, command.order_id)
    assert snapshot["payments"] == [("charge", 2_500, "succeeded"), ("refund", 2_500, "succeeded")]
    assert snapshot["reservations"] == [("SKU-A", 2, "released")]
    assert snapshot["shipments"] == []


async def test_cancel_refused_once_shipping_started(
    saga_harness: SagaHarness, record_history: HistoryRecorder
) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    gate = Gate(ShippingActivities(harness.database.sessions, harness.carrier).create_shipment)
    command = order_command(items={"SKU-A": 1})

    async with harness.worker(replace=[gate.activity()]):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await gate.wait_entered()
        during_shipping = await request_cancel(harness.client, command.order_id, "too late?")
        gate.open()
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        after_shipped = await request_cancel(harness.client, command.order_id, "really too late")
    await record_history(handle, "cancel_refused_shipping")

    assert not during_shipping.accepted
    assert "shipping has started" in during_shipping.reason
    assert not after_shipped.accepted
    assert after_shipped.status == OrderStatus.SHIPPED
    assert result.status == OrderStatus.SHIPPED
    snapshot = await order_snapshot(harness.database.sessions, command.order_id)
    assert snapshot["status"] == "SHIPPED"
    assert snapshot["payments"] == [("charge", 1_250, "succeeded")]


async def test_cancelling_the_workflow_still_compensates(
    saga_harness: SagaHarness, record_history: HistoryRecorder
) -> None:
    harness = saga_harness
    await add_product(harness.database.sessions, "SKU-A", on_hand=5)
    gate = Gate(PaymentActivities(harness.database.sessions, harness.gateway).charge_payment)
    command = order_command(items={"SKU-A": 2})

    async with harness.worker(replace=[gate.activity()]):
        handle = await place_order(harness.database.sessions, harness.client, harness.task_queue, command)
        await gate.wait_entered()
        await handle.cancel()
        gate.open()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    await record_history(handle, "workflow_cancelled")

    assert isinstance(failure.value.cause, CancelledError)
    snapshot = await order_snapshot(harness.database.sessions, command.order_id)
    assert (snapshot["status"], snapshot["failure_reason"]) == ("CANCELLED", "WORKFLOW_CANCELLED")
    assert snapshot["payments"] == [("charge", 2_500, "succeeded"), ("refund", 2_500, "succeeded")]
    assert snapshot["reservations"] == [("SKU-A", 2, "released")]
