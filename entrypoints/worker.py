"""Worker entrypoint: `python -m entrypoints.worker`. SIGINT/SIGTERM shut it down gracefully.

It serves its metrics on WORKER_METRICS_PORT (saga steps, sagas ended) and the Temporal SDK's on
TEMPORAL_METRICS_ADDRESS; with tracing on, its activities continue the trace of the order's placement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from entrypoints.bootstrap import worker_activities
from entrypoints.process import command_line, run_until_signalled
from infra.db import Database, open_database
from infra.settings import Settings, load_settings
from observability import tracing
from observability.metrics import StepMetricsInterceptor, temporal_runtime
from orchestrator.client import connect_temporal
from orchestrator.maintenance import RetentionWorkflow, ensure_retention_schedule
from orchestrator.workflow import OrderWorkflow

log = logging.getLogger("entrypoints.worker")


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """The runner of workflow code: the SDK's sandbox when WORKFLOW_SANDBOX, else plain (cheaper per saga).

    Unsandboxed, workflow code shares the worker's modules and nothing stops a call to the clock or I/O:
    the replay tests (sandboxed replayer, recorded histories) are what catch such code before a deploy.
    """
    return SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()


def build_worker(client: Client, settings: Settings, database: Database) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[OrderWorkflow, RetentionWorkflow],
        activities=worker_activities(settings, database.sessions),
        workflow_runner=workflow_runner(settings),
        # In-flight activities get this long to finish before they are cancelled on shutdown.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
        # Step attempts, failures and retries are counted here, outside workflow code.
        interceptors=[StepMetricsInterceptor()],
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    database = open_database(settings)
    tracing.instrument_engine(database.engine)
    try:
        client = await connect_temporal(settings, runtime=temporal_runtime(settings))
        worker = build_worker(client, settings, database)
        await ensure_retention_schedule(client, settings)
        async with worker:
            log.info(
                "worker polling task queue %r on %s (namespace %s)",
                settings.temporal_task_queue,
                settings.temporal_address,
                settings.temporal_namespace,
            )
            await stop.wait()
            log.info("shutting down: finishing in-flight work")
    finally:
        await database.dispose()


def main() -> None:
    command_line("python -m entrypoints.worker", __doc__).parse_args()
    settings = load_settings()
    run_until_signalled(
        settings, "worker", lambda stop: run_worker(settings, stop), metrics_port=settings.worker_metrics_port
    )
    # The worker has shut down cleanly. Skip interpreter finalization: the Temporal SDK's native
    # threads can still call into Python while it tears down and abort the process (seen in about
    # one exit in five here), which would turn a graceful stop into exit code 134.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
