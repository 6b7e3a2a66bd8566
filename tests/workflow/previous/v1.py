"""Frozen copy of OrderWorkflow as it was before patch `cancel-safe-unwind` (commit 142d08a).

Registered under the same workflow type name, `OrderWorkflow`, it plays the old worker in the
deploy test (sagas started on the old code finish on the new one) and proves that the histories in
`histories/v1/` are this code's. Do not edit: it is what ran in production. Its compensation stack
is copied in too, so that later changes to orchestrator/compensation.py do not change it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.inventory import InventoryActivities
    from activities.messages import (
        CancelOutcome,
        CancelRequest,
        OrderClosure,
        OrderRef,
        OrderSagaInput,
        OrderSagaResult,
        OrderSagaState,
        StatusChange,
        StepOutcome,
    )
    from activities.orders import OrderActivities
    from activities.payments import PaymentActivities
    from activities.shipping import ShippingActivities
    from domain.errors import BUSINESS_FAILURES
    from domain.model import FailureReason, OrderStatus
    from orchestrator import search_attributes

BUSINESS_FAILURE_CODES = frozenset(error.code for error in BUSINESS_FAILURES)

# Forward steps: transient failures are retried with backoff; business failures are final.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=8,
    non_retryable_error_types=sorted(BUSINESS_FAILURE_CODES),
)
# Compensations must eventually succeed: retried without limit.
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
STEP_TIMEOUT = timedelta(seconds=15)
LOCAL_STEP_TIMEOUT = timedelta(seconds=10)

CANCEL_REFUSED = "CancelRefused"


class _CancelRequested(Exception):
    """Raised inside the saga at the first step boundary after an accepted cancel."""


@workflow.defn(name="OrderWorkflow")
class PreviousOrderWorkflow:
    @workflow.init
    def __init__(self, saga: OrderSagaInput) -> None:
        self._state = OrderSagaState(order_id=saga.order_id, status=OrderStatus.PLACED)
        self._cancel_reason = ""

    @workflow.run
    async def run(self, saga: OrderSagaInput) -> OrderSagaResult:
        order = OrderRef(saga.order_id)
        compensations = Compensations()
        try:
            compensations.register(
                "release_inventory",
                lambda: self._compensate(InventoryActivities.release_inventory, order),
            )
            await self._step(InventoryActivities.reserve_inventory, order)
            self._advance(OrderStatus.INVENTORY_RESERVED)
            self._stop_if_cancel_requested()

            compensations.register(
                "refund_payment", lambda: self._compensate(PaymentActivities.refund_payment, order)
            )
            await self._step(PaymentActivities.charge_payment, order)
            self._advance(OrderStatus.PAYMENT_CHARGED)
            self._stop_if_cancel_requested()

            # From here on the parcel may be on its way: cancels are refused.
            self._state.shipping_started = True
            compensations.register(
                "cancel_shipment",
                lambda: self._compensate(ShippingActivities.cancel_shipment, order),
            )
            await self._step(ShippingActivities.create_shipment, order)
            await workflow.execute_local_activity_method(
                OrderActivities.mark_order_shipped,
                order,
                start_to_close_timeout=LOCAL_STEP_TIMEOUT,
                retry_policy=COMPENSATION_RETRY,
            )
            self._advance(OrderStatus.SHIPPED)
            return self._result()
        except _CancelRequested:
            await self._unwind(
                compensations,
                OrderStatus.CANCELLED,
                FailureReason.CUSTOMER_CANCELLED,
                self._cancel_reason,
            )
            return self._result()
        except ActivityError as err:
            reason, detail = _classify(err)
            await self._unwind(compensations, OrderStatus.FAILED, reason, detail)
            return self._result()
        except asyncio.CancelledError:
            # The workflow itself was cancelled (Web UI, CLI): still end clean, then report it.
            await self._unwind(
                compensations,
                OrderStatus.CANCELLED,
                FailureReason.WORKFLOW_CANCELLED,
                "the workflow was cancelled",
            )
            raise

    @workflow.query
    def status(self) -> OrderSagaState:
        return self._state

    @workflow.update
    def cancel(self, request: CancelRequest) -> CancelOutcome:
        self._state.cancel_requested = True
        self._cancel_reason = request.reason
        return CancelOutcome(accepted=True, status=self._state.status, reason="cancel accepted; compensating")

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._state.status.is_terminal or self._state.status == OrderStatus.COMPENSATING:
            raise ApplicationError(
                f"the order is already {self._state.status}",
                str(self._state.status),
                type=CANCEL_REFUSED,
            )
        if self._state.shipping_started:
            raise ApplicationError(
                "shipping has started; the order can no longer be cancelled",
                str(self._state.status),
                type=CANCEL_REFUSED,
            )

    async def _step(self, activity: Callable[..., Awaitable[StepOutcome]], order: OrderRef) -> StepOutcome:
        outcome = await workflow.execute_activity_method(
            activity,
            order,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRY,
            # A cancelled workflow waits for the running step to end before compensating, so a
            # late commit of that step cannot slip in after its compensation ran.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        # A step that finished despite a cancel of the workflow returns its result instead of
        # raising, so the cancel would be lost; honour it here.
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError
        return outcome

    async def _compensate(
        self, activity: Callable[..., Awaitable[StepOutcome]], order: OrderRef
    ) -> StepOutcome:
        return await workflow.execute_activity_method(
            activity,
            order,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )

    async def _unwind(
        self,
        compensations: Compensations,
        final_status: OrderStatus,
        reason: FailureReason,
        detail: str,
    ) -> None:
        self._state.failure_reason = reason
        self._state.failure_detail = detail
        await self._record(StatusChange(self._state.order_id, OrderStatus.COMPENSATING, detail))
        self._advance(OrderStatus.COMPENSATING)
        report = await compensations.run()
        self._state.compensations_run = report.completed
        await workflow.execute_local_activity_method(
            OrderActivities.close_order,
            OrderClosure(
                order_id=self._state.order_id,
                status=final_status,
                reason=reason,
                detail=detail,
                compensations=tuple(report.completed),
            ),
            start_to_close_timeout=LOCAL_STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )
        self._advance(final_status)

    async def _record(self, change: StatusChange) -> None:
        await workflow.execute_local_activity_method(
            OrderActivities.mark_order_status,
            change,
            start_to_close_timeout=LOCAL_STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )

    def _advance(self, status: OrderStatus) -> None:
        """Mirror a status the activities persisted, for the query and the Web UI's filters."""
        self._state.status = status
        workflow.upsert_search_attributes([search_attributes.ORDER_STATUS.value_set(status)])

    def _stop_if_cancel_requested(self) -> None:
        if self._state.cancel_requested:
            raise _CancelRequested

    def _result(self) -> OrderSagaResult:
        return OrderSagaResult(
            order_id=self._state.order_id,
            status=self._state.status,
            failure_reason=self._state.failure_reason,
            failure_detail=self._state.failure_detail,
            compensations_run=tuple(self._state.compensations_run),
        )


def _classify(err: ActivityError) -> tuple[FailureReason, str]:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in BUSINESS_FAILURE_CODES:
        return FailureReason(cause.type), cause.message
    # Retries exhausted or a timeout: still a clean, compensated end, flagged for operators.
    return FailureReason.INTERNAL_ERROR, str(cause or err)


# --- the compensation stack of that version (orchestrator/compensation.py at 142d08a)

Compensation = Callable[[], Awaitable[object]]


@dataclass
class CompensationReport:
    completed: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)


class Compensations:
    def __init__(self) -> None:
        self._stack: list[tuple[str, Compensation]] = []

    def register(self, name: str, compensation: Compensation) -> None:
        """Register the undo of a step *before* the step runs: a step that fails half-way, or whose
        result is lost, still gets undone. Each compensation must therefore be idempotent and a
        no-op when its step did nothing."""
        self._stack.append((name, compensation))

    @property
    def registered(self) -> list[str]:
        return [name for name, _ in self._stack]

    async def run(self) -> CompensationReport:
        """Run every registered compensation once, newest first, to completion.

        A cancellation arriving meanwhile does not stop them (the saga must end clean); it is
        re-raised once they are done. A failing compensation does not stop the others.
        """
        task = asyncio.ensure_future(self._run_in_reverse())
        cancelled = False
        while True:
            try:
                report = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return report

    async def _run_in_reverse(self) -> CompensationReport:
        report = CompensationReport()
        while self._stack:
            name, compensation = self._stack.pop()
            try:
                await compensation()
            except Exception as err:
                report.failed[name] = err
            else:
                report.completed.append(name)
        return report
