"""OrderWorkflow: reserve, charge, ship, mark shipped; compensate in reverse on failure or cancel.

Workflow code only orchestrates: no I/O, no clock, no randomness. Every effect is an activity.

Cancels of the workflow (Web UI, CLI) can arrive at any await. A forward step in flight finishes
before the saga acts on the cancel; from the moment the saga decides to unwind, everything up to
and including the closing write (COMPENSATING, every compensation, the close with its event) runs
as one task that no cancel reaches, and so does the closing write of a shipped order. The workflow
ends CANCELED only after the order is closed, and only when the workflow cancel is what closed it.
Sagas that took such a decision on the previous code keep its behaviour (patch CANCEL_SAFE_UNWIND).

Since patch LEAN_SAGA (decided once, before the first step) the saga reserves the stock as a local activity
(charge and shipment stay activity tasks, so a slow provider never holds up a cancel), upserts `OrderStatus`
only where operators filter (compensating, final outcome; in flight is the start's PLACED), and tells the
Web UI what it does in business terms: a summary on each activity and its current details with a link to
the order's console page. Sagas started on the previous code finish as they began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
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
    from orchestrator import search_attributes, summaries
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
# - lean-saga: reserve as a local activity; OrderStatus upserted when compensating and at the final
#   outcome only; activity summaries and current details for the Web UI. Decided before the first step,
#   so a saga keeps one version throughout; it implies cancel-safe-unwind (not asked for again).
LEAN_SAGA = "lean-saga"


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


class _LocalStepFailed(Exception):
    """A local step's failure. It reaches the workflow as the activity raised it (ApplicationError,
    TimeoutError, CancelledError), not wrapped in an ActivityError like a remote step's."""

    def __init__(self, failure: FailureError) -> None:
        super().__init__(str(failure))
        self.failure = failure


@workflow.defn
class OrderWorkflow:
    @workflow.init
    def __init__(self, saga: OrderSagaInput) -> None:
        self._state = OrderSagaState(order_id=saga.order_id, status=OrderStatus.PLACED)
        self._cancel_reason = ""
        self._unwinding = False
        self._saga = saga
        self._lean = False  # patch LEAN_SAGA, decided at the start of run()

    @workflow.run
    async def run(self, saga: OrderSagaInput) -> OrderSagaResult:
        order = OrderRef(saga.order_id)
        compensations = Compensations()
        self._lean = workflow.patched(LEAN_SAGA)
        self._describe()
        try:
            self._register(compensations, InventoryActivities.release_inventory, order)
            if self._lean:
                await self._reserve_locally(order)
            else:
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
            ending = _Ending(OrderStatus.FAILED, *_classify(err.cause or err))
        except _LocalStepFailed as err:
            ending = _Ending(OrderStatus.FAILED, *_classify(err.failure))
        except asyncio.CancelledError:
            # The workflow itself was cancelled (Web UI, CLI): still end clean, then report it.
            ending = WORKFLOW_CANCELLED

        # The saga has decided to unwind: from here on, no customer cancel is accepted.
        self._unwinding = True
        if self._cancel_safe_unwind():
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
        self._describe()
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
        self._honour_workflow_cancel()
        return outcome

    async def _reserve_locally(self, order: OrderRef) -> StepOutcome:
        """The reserve step as a local activity (patch LEAN_SAGA): no activity task, no server round trip.

        Run by the worker that runs the saga, holding its workflow task meanwhile: a workflow cancel or a
        cancel update arriving during it reaches the saga when the reserve ends (milliseconds), or at
        the worker's heartbeat of the workflow task (80% of its 10 s timeout) if the reserve is stuck, a
        cancel update being answered at the heartbeat after (tests/workflow/test_cancel_anywhere.py).
        Like the remote steps, a cancelled workflow waits for the reserve to end, so a late commit
        cannot slip in after its compensation ran.
        """
        activity = InventoryActivities.reserve_inventory
        try:
            outcome = await workflow.execute_local_activity_method(
                activity,
                order,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=STEP_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=summaries.step_summary(activity, self._saga),
            )
        except ActivityError:
            raise  # already the shape of a remote step's failure
        except FailureError as failure:
            raise _LocalStepFailed(failure) from failure
        self._honour_workflow_cancel()
        return outcome

    def _honour_workflow_cancel(self) -> None:
        # A step that finished despite a cancel of the workflow returns its result instead of
        # raising, so the cancel would be lost; honour it here.
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError

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
            summary=self._summary(summaries.step_summary(OrderActivities.mark_order_shipped, self._saga)),
        )
        if self._cancel_safe_unwind():
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
        """Run a step or compensation as an activity task, with its Web UI summary."""
        return await workflow.execute_activity_method(
            activity,
            order,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=retry_policy,
            cancellation_type=cancellation_type,
            summary=self._summary(summaries.step_summary(activity, self._saga)),
        )

    def _cancel_safe_unwind(self) -> bool:
        """Patch CANCEL_SAFE_UNWIND. A saga on LEAN_SAGA started on code that has it: no need to ask, which
        saves the marker and the search-attribute upsert a recorded patch costs the server."""
        return self._lean or workflow.patched(CANCEL_SAFE_UNWIND)

    def _summary(self, text: str) -> str | None:
        """An activity's summary for the Web UI; None before patch LEAN_SAGA (it is part of the history)."""
        return text if self._lean else None

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
            summary=self._summary(summaries.closing(ending.status, ending.reason)),
        )
        self._advance(ending.status)

    async def _record(self, change: StatusChange) -> None:
        await workflow.execute_local_activity_method(
            OrderActivities.mark_order_status,
            change,
            start_to_close_timeout=LOCAL_STEP_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
            summary=self._summary(summaries.recording(change.status)),
        )

    def _advance(self, status: OrderStatus) -> None:
        """Mirror a status the activities persisted, for the query and the Web UI.

        `OrderStatus` is upserted after every step before patch LEAN_SAGA; since, only where operators
        filter: COMPENSATING and the final outcome (in flight is the PLACED the saga started with). Each
        upsert is a command the server pays for (about 5 ms of its CPU here).
        """
        self._state.status = status
        if not self._lean or status == OrderStatus.COMPENSATING or status.is_terminal:
            workflow.upsert_search_attributes([search_attributes.ORDER_STATUS.value_set(status)])
        self._describe()

    def _describe(self) -> None:
        """The Web UI's current details (a query answer, not history: free for the server)."""
        if self._lean:
            workflow.set_current_details(summaries.current_details(self._saga, self._state))

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


def _classify(failure: BaseException) -> tuple[FailureReason, str]:
    """Why a step failed: its business failure, or INTERNAL_ERROR. `failure`: what the step raised."""
    if isinstance(failure, ApplicationError) and failure.type in BUSINESS_FAILURE_CODES:
        return FailureReason(failure.type), failure.message
    # Retries exhausted or a timeout: still a clean, compensated end, flagged for operators.
    return FailureReason.INTERNAL_ERROR, str(failure)
