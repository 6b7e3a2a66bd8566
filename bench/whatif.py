"""What-if, for the benchmark only: the order saga with local-activity steps and no search-attribute upserts.

    python -m bench.whatif      # its worker, on TEMPORAL_TASK_QUEUE, configured like the real one

Not the service's workflow (orchestrator/workflow.py is unchanged): a subclass of `OrderWorkflow`, registered
under the same name on a task queue of its own, with the same activities, timeouts and retry policies. Two
changes only: `_execute` runs the steps and compensations as local activities (no activity task, no server
round trip per step), and `_advance` keeps the status for the query without upserting `OrderStatus`.

Its histories differ from the real saga's (markers instead of activity tasks, no upserts), so it cannot
replace it without a versioning plan: it is here to measure what the change would buy, for the lead to decide.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.messages import OrderRef, OrderSagaInput, OrderSagaResult, StepOutcome
    from domain.model import OrderStatus
    from orchestrator.workflow import STEP_TIMEOUT, OrderWorkflow


@workflow.defn(name="OrderWorkflow")
class LocalStepsOrderWorkflow(OrderWorkflow):
    @workflow.run
    async def run(self, saga: OrderSagaInput) -> OrderSagaResult:
        return await super().run(saga)

    async def _execute(
        self,
        activity: Callable[..., Awaitable[StepOutcome]],
        order: OrderRef,
        retry_policy: RetryPolicy,
        cancellation_type: ActivityCancellationType,
    ) -> StepOutcome:
        return await workflow.execute_local_activity_method(
            activity,
            order,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=retry_policy,
            cancellation_type=cancellation_type,
        )

    def _advance(self, status: OrderStatus) -> None:
        self._state.status = status  # the database is the read model; no upsert


async def serve() -> None:
    from temporalio.worker import Worker

    from entrypoints.bootstrap import saga_activities
    from infra.db import open_database
    from infra.settings import load_settings
    from orchestrator.client import connect_temporal

    settings = load_settings()
    logging.basicConfig(level=settings.log_level)
    database = open_database(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        client = await connect_temporal(settings)
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[LocalStepsOrderWorkflow],
            activities=saga_activities(settings, database.sessions),
            graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
            interceptors=_real_worker_interceptors(),
        )
        async with worker:
            await stop.wait()
    finally:
        await database.dispose()


def _real_worker_interceptors() -> list[Any]:
    """The interceptors the real worker runs with, so that both pay for the same instrumentation."""
    try:
        from observability.metrics import StepMetricsInterceptor
    except ImportError:
        return []
    return [StepMetricsInterceptor()]


if __name__ == "__main__":
    asyncio.run(serve())
