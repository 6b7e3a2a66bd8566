"""Frozen copy of OrderWorkflow as it was before patch `lean-saga` (commit e660b77): version 2.

Version 2 is patch `cancel-safe-unwind` on version 1 (`v1.py`). Registered under the same workflow type
name, `OrderWorkflow`, it plays the old worker in the deploy test of `lean-saga` and proves that the
histories in `histories/v2/` are this code's. Do not edit: it is what ran in production. Its compensation
stack is the service's (`orchestrator.compensation`, unchanged since): a change there that altered what
this code does would fail the replay of `histories/v2/` on this copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
    from activities.steps import step_name
    from domain.errors import BUSINESS_FAILURES
    from domain.model import FailureReason, OrderStatus
    from orchestrator import search_attributes
    from orchestrator.compensation import Compensations, run_to_completion

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

# Versions of this workflow (README, "Changing the workflow safely"). A saga whose history reached a
# patched decision point on the code before the patch replays the old branch; every saga reaching
# it on this code records the patch and takes the new one.
# - cancel-safe-unwind: the unwind and the shipped order's closing write run out of reach of
#   cancels; a step cut short by a workflow cancel closes the order WORKFLOW_CANCELLED.
CANCEL_SAFE_UNWIND = "cancel-safe-unwind"


@dataclass(frozen=True)
class _Ending:
    """How an unwinding saga closes the order."""

    status: OrderStatus
    reason: FailureReason
    detail: str


WORKFLOW_CANCELLED = _Ending(
    OrderStatus.CANCELLED, FailureReason.WORKFLOW_CANCELLED, "the workflow was cancelled"
)


class _CancelRequested(Exception):
    """Raised inside the saga at the first step boundary after an accepted cancel."""


@workflow.defn(name="OrderWorkflow")
class PreviousOrderWorkflow:
    @workflow.init
    def __init__(self, saga: OrderSagaInput) -> None:
        self._state = OrderSagaState(order_id=saga.order_id, status=OrderStatus.PLACED)
        self._cancel_reason = ""
        self._unwinding = False

    @workflow.run
    async def run(self, saga: OrderSagaInput) -> OrderSagaResult:
        order = OrderRef(saga.order_id)
        compensations = Compensations()
        try:
            self._register(compensations, InventoryActivities.release_inventory, order)
            await self._step(InventoryActivities.reserve_inventory, order)
            self._advance(OrderStatus.INVENTORY_RESERVED)
            self._stop_if_cancel_requested()

            self._register(compensations, PaymentActivities.refund_payment, order)
            await self._step(PaymentActivities.charge_payment, order)
            self._advance(OrderStatus.PAYMENT_CHARGED)
            self._stop_if_cancel_requested()

            # From here on the parcel may be on its way: cancels are refused.
            self._state.shipping_started = True
            self._register(compensations, ShippingActivities.cancel_shipment, order)
            await self._step(ShippingActivities.create_shipment, order)
            await self._mark_shipped(order)
            self._advance(OrderStatus.SHIPPED)
            return self._result()
        except _CancelRequested:
            ending = _Ending(OrderStatus.CANCELLED, FailureReason.CUSTOMER_CANCELLED, self._cancel_reason)
        except ActivityError as err:
            ending = _Ending(OrderStatus.FAILED, *_classify(err))
        except asyncio.CancelledError:
            # The workflow itself was cancelled (Web UI, CLI): still end clean, then report it.
            ending = WORKFLOW_CANCELLED

        # The saga has decided to unwind: from here on, no customer cancel is accepted.
        self._unwinding = True
        if workflow.patched(CANCEL_SAFE_UNWIND):
            if ending.reason == FailureReason.INTERNAL_ERROR and workflow.cancellation_reason() is not None:
                # The step was cut short by the workflow cancel (cancelled before it started or
                # between two attempts), not by a fault of its own.
                ending = WORKFLOW_CANCELLED
            # One task, out of reach of cancels, until the order is closed with its event.
            await run_to_completion(self._unwind(compensations, ending))
        else:
            # The previous behaviour, for sagas that reached this point on the code before the patch.
            await self._unwind(compensations, ending)
        if ending is WORKFLOW_CANCELLED:
            raise asyncio.CancelledError  # the order is closed: now end the workflow CANCELED
        return self._result()

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
        if self._unwinding:  # decided, COMPENSATING not recorded yet
            raise ApplicationError(
                "the order is already being compensated",
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
        # A cancelled workflow waits for the running step to end before compensating, so a late commit of
        # that step cannot slip in after its compensation ran.
        outcome = await self._execute(
            activity, order, STEP_RETRY, ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
        )
        # A step that finished despite a cancel of the workflow returns its result instead of
        # raising, so the cancel would be lost; honour it here.
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError
        return outcome

    def _register(
        self,
        compensations: Compensations,
        activity: Callable[..., Awaitable[StepOutcome]],
        order: OrderRef,
    ) -> None:
        """Register `activity` (a compensation) under its own activity name, before its step runs."""
        compensations.register(step_name(activity), lambda: self._compensate(activity, order))

    async def _mark_shipped(self, order: OrderRef) -> None:
        """The closing write of a shipped order (status, stock, OrderShipped event)."""
        shipped = workflow.execute_local_activity_method(
            OrderActivities.mark_order_shipped,
            order,
            start_to_close_timeout=LOCAL_STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )
        if workflow.patched(CANCEL_SAFE_UNWIND):
            # The parcel is booked: a cancel arriving during this write is too late, and cutting it
            # short would leave an order that may be SHIPPED to be compensated.
            await run_to_completion(shipped)
        else:
            await shipped

    async def _compensate(
        self, activity: Callable[..., Awaitable[StepOutcome]], order: OrderRef
    ) -> StepOutcome:
        return await self._execute(activity, order, COMPENSATION_RETRY, ActivityCancellationType.TRY_CANCEL)

    async def _execute(
        self,
        activity: Callable[..., Awaitable[StepOutcome]],
        order: OrderRef,
        retry_policy: RetryPolicy,
        cancellation_type: ActivityCancellationType,
    ) -> StepOutcome:
        """Run a step or compensation as an activity task (bench/whatif.py overrides this alone)."""
        return await workflow.execute_activity_method(
            activity,
            order,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=retry_policy,
            cancellation_type=cancellation_type,
        )

    async def _unwind(self, compensations: Compensations, ending: _Ending) -> None:
        """Record COMPENSATING, run the compensations newest first, close the order with its event."""
        self._state.failure_reason = ending.reason
        self._state.failure_detail = ending.detail
        await self._record(StatusChange(self._state.order_id, OrderStatus.COMPENSATING, ending.detail))
        self._advance(OrderStatus.COMPENSATING)
        report = await compensations.run()
        self._state.compensations_run = report.completed
        await workflow.execute_local_activity_method(
            OrderActivities.close_order,
            OrderClosure(
                order_id=self._state.order_id,
                status=ending.status,
                reason=ending.reason,
                detail=ending.detail,
                compensations=tuple(report.completed),
            ),
            start_to_close_timeout=LOCAL_STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )
        self._advance(ending.status)

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
