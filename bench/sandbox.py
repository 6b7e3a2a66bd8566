"""Worker CPU per saga with the sandboxed and the unsandboxed workflow runner, in one run (WORKFLOW_SANDBOX).

    python -m bench.sandbox [--sagas 200] [--concurrency 20] [--rounds 3]

Starts a Temporal dev server of its own (offline binary, in memory, the tests' flags), then alternates the two
runners, sandboxed first (A/B/A/B...): each round runs `--sagas` real `OrderWorkflow`s, `--concurrency` at a
time, on a task queue of its own with a fresh worker of that runner in this process, waiting on each result.
The steps are no-op activities of the saga's names and types (no database), so what differs is the runner
alone. Bounded concurrency keeps the worker out of overload: in a burst, sagas wait for the worker with
their workflow task open (the local steps), which adds workflow-task heartbeats to both runners' figures.

Prints per round the CPU ms per saga of this process (worker and client: the client's share is the same
for both runners) and of the dev server, and the wall time; then the medians per runner and the difference,
which is the sandbox's cost per saga. Asserts nothing: on a shared machine only same-run ratios mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.messages import OrderClosure, OrderRef, StatusChange, StepOutcome
from domain.model import Money, RequestedItem
from ops.provisioning import executable
from orchestrator import search_attributes
from orchestrator.client import console_order_url, start_saga
from orchestrator.workflow import OrderWorkflow

# Prompt dispatch of workflow tasks and no poller cap, as the tests and bench/e2e.py run the dev server.
DEV_SERVER_ARGS = [
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "frontend.namespaceCount=10000",
]


def _done(order_id: str) -> StepOutcome:
    return StepOutcome(order_id, changed=True)


class NoOpSteps:
    """The saga's activities by name and type, doing nothing."""

    @activity.defn
    async def reserve_inventory(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def release_inventory(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def charge_payment(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def refund_payment(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def create_shipment(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def cancel_shipment(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def mark_order_shipped(self, order: OrderRef) -> StepOutcome:
        return _done(order.order_id)

    @activity.defn
    async def mark_order_status(self, change: StatusChange) -> StepOutcome:
        return _done(change.order_id)

    @activity.defn
    async def close_order(self, closure: OrderClosure) -> StepOutcome:
        return _done(closure.order_id)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.reserve_inventory,
            self.release_inventory,
            self.charge_payment,
            self.refund_payment,
            self.create_shipment,
            self.cancel_shipment,
            self.mark_order_shipped,
            self.mark_order_status,
            self.close_order,
        ]


@dataclass(frozen=True)
class Round:
    runner: str
    own_ms: float  # this process (worker + client), CPU ms per saga
    server_ms: float  # the dev server, CPU ms per saga
    wall_s: float


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _round(
    client: Client, server: psutil.Process, name: str, runner: WorkflowRunner, sagas: int, concurrency: int
) -> Round:
    task_queue = f"bench-sandbox-{uuid.uuid4().hex[:8]}"
    me = psutil.Process()
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            order_id = str(uuid.uuid4())
            handle = await start_saga(
                client,
                task_queue,
                order_id,
                "cust-bench",
                items=(RequestedItem("SKU-A", 2),),
                total=Money(1250, "EUR"),
                console_url=console_order_url("http://127.0.0.1:8000", order_id),
            )
            await handle.result()

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[OrderWorkflow],
        activities=NoOpSteps().all(),
        workflow_runner=runner,
    ):
        own, on_server, started = _cpu_seconds(me), _cpu_seconds(server), time.monotonic()
        await asyncio.gather(*(one() for _ in range(sagas)))
        wall = time.monotonic() - started
        own, on_server = _cpu_seconds(me) - own, _cpu_seconds(server) - on_server
    return Round(name, own * 1000 / sagas, on_server * 1000 / sagas, wall)


async def main(sagas: int, concurrency: int, rounds: int) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=executable("temporal"),
        search_attributes=list(search_attributes.ALL),
        dev_server_extra_args=DEV_SERVER_ARGS,
    )
    try:
        [server] = [
            child for child in psutil.Process().children(recursive=True) if "temporal" in child.name()
        ]
        runners: dict[str, type[WorkflowRunner]] = {
            "sandboxed": SandboxedWorkflowRunner,
            "unsandboxed": UnsandboxedWorkflowRunner,
        }
        await _round(env.client, server, "warm-up", UnsandboxedWorkflowRunner(), min(sagas, 50), concurrency)
        results: list[Round] = []
        for number in range(rounds):
            for name, runner in runners.items():
                result = await _round(env.client, server, name, runner(), sagas, concurrency)
                results.append(result)
                print(
                    f"round {number + 1} {name:<11} worker+client {result.own_ms:6.2f} ms/saga  "
                    f"server {result.server_ms:6.2f} ms/saga  {sagas / result.wall_s:6.1f} sagas/s",
                    flush=True,
                )
        medians = {name: statistics.median(r.own_ms for r in results if r.runner == name) for name in runners}
        for name, value in medians.items():
            print(f"median {name:<11} worker+client {value:6.2f} ms/saga")
        print(f"sandbox cost: {medians['sandboxed'] - medians['unsandboxed']:.2f} ms of worker CPU per saga")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=200, help="sagas per round (default 200)")
    parser.add_argument("--concurrency", type=int, default=20, help="sagas in flight at once (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each runner, alternated (default 3)")
    args = parser.parse_args()
    asyncio.run(main(args.sagas, args.concurrency, args.rounds))
