"""The retention run as a Temporal Schedule: the engine the saga already runs on is the scheduler.

`RetentionWorkflow` runs one activity, `apply_retention` (activities/retention.py), on the saga's task queue.
The worker registers the schedule at start with `ensure_retention_schedule`: create, or update it when it
exists, so any number of workers starting at once leave exactly one schedule with the current settings.
Overlapping runs are skipped (a run still busy when the next is due lets that one go).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleHandle,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )
    from temporalio.service import RPCError

    from activities.retention import RetentionActivities, RetentionResult
    from infra.settings import Settings

log = logging.getLogger(__name__)


RETENTION_WORKFLOW = "RetentionWorkflow"


@workflow.defn(name=RETENTION_WORKFLOW)
class RetentionWorkflow:
    @workflow.run
    async def run(self) -> RetentionResult:
        return await workflow.execute_activity_method(
            RetentionActivities.apply_retention,
            start_to_close_timeout=timedelta(hours=1),
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=10)),
        )


def retention_schedule_id(settings: Settings) -> str:
    """One schedule per task queue (two deployments sharing a namespace keep theirs apart)."""
    return f"retention-{settings.temporal_task_queue}"


def retention_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            # By its registered name: the typed form (RetentionWorkflow.run) makes mypy mis-infer the
            # saga's get_workflow_handle_for(OrderWorkflow.run, ...) elsewhere in the package.
            RETENTION_WORKFLOW,
            id=f"{retention_schedule_id(settings)}-run",
            task_queue=settings.temporal_task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(minutes=settings.retention_interval_minutes))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_retention_schedule(client: Client, settings: Settings) -> ScheduleHandle | None:
    """Create the retention schedule, or bring an existing one to the current settings (idempotent).

    None when RETENTION_INTERVAL_MINUTES is 0 (no schedule wanted; an existing one is left alone), or when
    Temporal refuses the schedule: that is logged, and the worker serves sagas all the same.
    """
    if settings.retention_interval_minutes == 0:
        return None
    schedule = retention_schedule(settings)
    schedule_id = retention_schedule_id(settings)
    try:
        try:
            return await client.create_schedule(schedule_id, schedule)
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(schedule_id)

            def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
                # Keep what an operator changed by hand (paused, a note); the rest follows the settings.
                return ScheduleUpdate(schedule=replace(schedule, state=current.description.schedule.state))

            await handle.update(update)
            return handle
    except RPCError:
        log.exception(
            "cannot register the retention schedule %s; run `order-saga retention run`", schedule_id
        )
        return None
