"""The floor the saga is compared with: workflows of three no-op activities, and a worker for them.

    python -m bench.bare TASK_QUEUE     # the worker (TEMPORAL_ADDRESS from the environment)

- `BareWorkflow`: three no-op activities, one after the other, with the saga's timeouts. The issue's floor.
- `BareLocalWorkflow`: the same three as local activities (no server round trip per activity).
- `BareUpsertWorkflow`: three activities, and after each an `OrderStatus` search-attribute upsert, the way
  `OrderWorkflow._advance` does. It prices the upserts alone.

The worker is configured like the saga's (default sandboxed runner, default slots), in its own process.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey
from temporalio.worker import Worker

TIMEOUT = timedelta(seconds=15)
ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")


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


@workflow.defn(name="BareLocalWorkflow")
class BareLocalWorkflow:
    @workflow.run
    async def run(self) -> int:
        done = 0
        for step in range(3):
            done += await workflow.execute_local_activity(noop, step, start_to_close_timeout=TIMEOUT)
        return done


@workflow.defn(name="BareUpsertWorkflow")
class BareUpsertWorkflow:
    @workflow.run
    async def run(self) -> int:
        done = 0
        for step, status in enumerate(("INVENTORY_RESERVED", "PAYMENT_CHARGED", "SHIPPED")):
            done += await workflow.execute_activity(noop, step, start_to_close_timeout=TIMEOUT)
            workflow.upsert_search_attributes([ORDER_STATUS.value_set(status)])
        return done


WORKFLOWS = (BareWorkflow, BareLocalWorkflow, BareUpsertWorkflow)


async def serve(task_queue: str) -> None:
    # Imported here so that importing the workflows (the sandbox does) pulls in nothing of the service.
    from infra.settings import load_settings
    from orchestrator.client import connect_temporal

    client = await connect_temporal(load_settings())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=list(WORKFLOWS), activities=[noop]):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
