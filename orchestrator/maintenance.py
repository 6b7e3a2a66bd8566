"""The retention run as a Temporal Schedule: the engine the saga already runs on is the scheduler.

`RetentionWorkflow` runs one activity, `apply_retention` (infra/retention.py), on the saga's task queue.
The worker registers the schedule at start with `ensure_retention_schedule`: create, or update it when it
exists, so any number of workers starting at once leave exactly one schedule with the current settings.
Overlapping runs are skipped (a run still busy when the next is due lets that one go).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
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

    from infra.retention import run_retention
    from infra.settings import Settings


@dataclass(frozen=True)
class RetentionResult:
    """Rows deleted per table, and the number of batches it took."""

    deleted: dict[str, int]
    batches: int


class RetentionActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings

    @activity.defn(name="apply_retention")
    async def apply_retention(self) -> RetentionResult:
        """Delete every table's expired rows (infra/retention.py); safe to repeat."""
        report = await run_retention(self._sessions, self._settings)
        return RetentionResult(report.deleted, report.batches)


@workflow.defn(name="RetentionWorkflow")
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
            RetentionWorkflow.run,
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

    None when RETENTION_INTERVAL_MINUTES is 0 (no schedule wanted; an existing one is left alone).
    """
    if settings.retention_interval_minutes == 0:
        return None
    schedule = retention_schedule(settings)
    schedule_id = retention_schedule_id(settings)
    try:
        return await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            # Keep what an operator changed by hand (paused, a note); the rest follows the settings.
            return ScheduleUpdate(schedule=replace(schedule, state=current.description.schedule.state))

        await handle.update(update)
        return handle
