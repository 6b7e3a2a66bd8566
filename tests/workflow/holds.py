"""Holding a saga inside a step with a PostgreSQL table lock, and seeing what the worker made of a cancel.

- `TableLock`: `LOCK TABLE ... IN EXCLUSIVE MODE` from a connection of its own, as a slow migration
  would; a step that writes the table waits inside its transaction until `release()`.
- `CancelWatch`: a workflow runner for a test worker that notes every workflow whose cancel request
  the worker has applied (the activation that carried it has run), so a test releases a held step
  only once the saga has really seen the cancel, without guessing a delay.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

POLL_SECONDS = 0.05


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL of a test database as a plain asyncpg DSN."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class TableLock:
    """An EXCLUSIVE lock on one table (reads pass, every write waits), held until `release()`."""

    def __init__(self, database_url: str, table: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self.table = table
        self._connection: asyncpg.Connection | None = None

    async def acquire(self) -> TableLock:
        self._connection = await asyncpg.connect(self._dsn)
        await self._connection.execute("BEGIN")
        await self._connection.execute(f'LOCK TABLE "{self.table}" IN EXCLUSIVE MODE')
        return self

    async def wait_blocked(self, within: float = 30) -> None:
        """Until another session waits for a lock on the table (the held step is inside it)."""
        assert self._connection is not None
        async with asyncio.timeout(within):
            while True:
                waiting = await self._connection.fetchval(
                    """
                    SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                    WHERE c.relname = $1 AND NOT l.granted
                      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """,
                    self.table,
                )
                if waiting:
                    return
                await asyncio.sleep(POLL_SECONDS)

    async def release(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.execute("COMMIT")
            finally:
                await connection.close()


class CancelWatch:
    """Counts, per workflow id, the activations carrying a workflow cancel that a worker has run."""

    def __init__(self) -> None:
        self._applied: dict[str, int] = {}
        self._lock = threading.Lock()  # activations run on the worker's threads

    def runner(self) -> WorkflowRunner:
        """The default (sandboxed) runner, watched."""
        return _WatchingRunner(SandboxedWorkflowRunner(), self)

    def applied(self, workflow_id: str) -> int:
        with self._lock:
            return self._applied.get(workflow_id, 0)

    async def wait_applied(self, workflow_id: str, within: float = 30) -> None:
        """Until a worker has run the activation that delivered the workflow's cancel request."""
        async with asyncio.timeout(within):
            while True:
                if self.applied(workflow_id):
                    return
                await asyncio.sleep(POLL_SECONDS)

    def _note(self, workflow_id: str) -> None:
        with self._lock:
            self._applied[workflow_id] = self._applied.get(workflow_id, 0) + 1


class _WatchingRunner(WorkflowRunner):
    def __init__(self, inner: WorkflowRunner, watch: CancelWatch) -> None:
        self._inner = inner
        self._watch = watch

    def prepare_workflow(self, defn: Any) -> None:
        self._inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _WatchedInstance(self._inner.create_instance(det), det.info.workflow_id, self._watch)

    def set_worker_level_failure_exception_types(self, types: Any) -> None:
        self._inner.set_worker_level_failure_exception_types(types)


class _WatchedInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, workflow_id: str, watch: CancelWatch) -> None:
        self._inner = inner
        self._workflow_id = workflow_id
        self._watch = watch

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        completion = self._inner.activate(act)
        if any(job.HasField("cancel_workflow") for job in act.jobs):
            self._watch._note(self._workflow_id)
        return completion

    def get_serialization_context(self, command_info: Any) -> Any:
        return self._inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self._inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self._inner.get_info()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def wait_for_history_event(
    handle: WorkflowHandle[Any, Any], event_type: EventType.ValueType, *, after: int = 0, within: float = 30
) -> int:
    """Until the workflow's history has an event of `event_type` with an id above `after`; its id."""
    async with asyncio.timeout(within):
        while True:
            history = await handle.fetch_history()
            for event in history.events:
                if event.event_id > after and event.event_type == event_type:
                    return event.event_id
            await asyncio.sleep(POLL_SECONDS)


def patches_recorded(history: WorkflowHistory) -> set[str]:
    """The ids of the `workflow.patched` markers in a history."""
    patches: set[str] = set()
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
            continue
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_patch":
            patches.add(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return patches
