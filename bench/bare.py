"""The floor the saga is compared with: a workflow of three no-op activities, and a worker for it.

    python -m bench.bare TASK_QUEUE     # the worker (TEMPORAL_ADDRESS and the rest from the environment)

`BareWorkflow` runs three no-op activities one after the other, with the saga's step timeout. Its worker runs
in its own process with the workflow runner the saga's worker would use under the same settings (sandboxed
or not): it asks `entrypoints.worker.workflow_runner`, so a setting that switches the
saga's runner switches the floor's too, and a comparison of the two never mixes runners.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import Worker, WorkflowRunner

TIMEOUT = timedelta(seconds=15)


@activity.defn(name="bench_noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self) -> int:
        done = 0
        for step in range(3):
            done += await workflow.execute_activity(noop, step, start_to_close_timeout=TIMEOUT)
        return done


def saga_workflow_runner() -> WorkflowRunner:
    """The workflow runner the saga's worker uses under this process's settings (WORKFLOW_SANDBOX)."""
    # Imported here so that importing the workflow (the sandbox does) pulls in nothing of the service.
    from entrypoints.worker import workflow_runner
    from infra.settings import load_settings

    return workflow_runner(load_settings())


async def serve(task_queue: str) -> None:
    from infra.settings import load_settings
    from orchestrator.client import connect_temporal

    client = await connect_temporal(load_settings())
    runner = saga_workflow_runner()
    print(f"bare worker: workflow runner {type(runner).__name__}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        client, task_queue=task_queue, workflows=[BareWorkflow], activities=[noop], workflow_runner=runner
    ):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
