"""End-to-end benchmark: prints figures and writes them to results/ (JSON and a PNG plot). Not a test.

    make bench                                   # python -m bench.e2e with the defaults: a few minutes
    python -m bench.e2e --e2e-orders 600 --steady-seconds 60 --reactor-messages 5000

One run, one fresh PostgreSQL database, one Temporal dev server (the Procfile's flags), every component in
its own process (`ops.launcher`), measured in this order:

1. The floor: `bench.bare.BareWorkflow` (three no-op activities) on the same dev server, served by its own
   worker process: maximum throughput (a burst), then latency at half that rate. For reference the same burst
   with three local activities, and with the saga's three search-attribute upserts.
2. End to end, POST /orders until all three reactors have applied the order's event (their inbox rows):
   maximum throughput (a burst), then latency at half that rate (open loop).
3. POST /orders latency at 20 requests/s (open loop).
4. Reactor consume throughput: the reactors are stopped, N order.shipped.v1 events queued for each, then each
   reactor is started alone and timed from its first to its last inbox row; against a raw aio-pika consumer
   (manual acks, the reactors' prefetch) of the same messages from a quorum queue.
5. Server round trips per order, counted from workflow histories; CPU seconds per order of each process
   (psutil); the peak resident memory of each process (the kernel's VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psutil
from sqlalchemy import func, select, text
from temporalio.api.enums.v1 import EventType as HistoryEventType

from contracts.envelope import STRUCTURED_CONTENT_TYPE, encode_event, new_event
from contracts.orders import ORDER_SHIPPED_V1, OrderLineV1, OrderShippedV1, ShipmentV1
from domain.model import OrderStatus, workflow_id_for
from infra import models
from infra.db import Database, open_database
from infra.settings import Settings
from messaging.broker import close_quietly, connect
from ops.launcher import NAMESPACE_COUNT_FLAG, REACTOR_NAMES, LocalStack, StackOptions
from ops.processes import peak_rss_bytes
from ops.provisioning import ROOT, empty_database, executable, free_port, migrate
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage

RESULTS = ROOT / "results"
AUTH = {"Authorization": f"Bearer {Settings.DEVELOPMENT_API_KEY}"}
BARE_QUEUE = "bench-bare"
SHARED = ("rabbitmq (shared)", "postgresql (shared)")


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds of values in seconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000

    return {
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / len(ordered) * 1000,
    }


def order_body(customer: str) -> dict[str, Any]:
    return {
        "customer": {"id": customer, "email": f"{customer}@example.com"},
        "items": [{"sku": "SKU-BENCH", "quantity": 1}],
        "payment_token": "tok_ok",
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Analytical Way",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    }


class Meter:
    """CPU seconds of each process of the stack (and of the shared broker and database), peak memory."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack

    def _processes(self) -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {}
        for name, component in self._stack.components.items():
            process = component.psutil_process()
            if process is not None:
                found[name] = [process]
        found["bench client"] = [psutil.Process()]
        for process in psutil.process_iter(["name", "username"]):
            if process.info["name"] == "beam.smp":
                found.setdefault(SHARED[0], []).append(process)
            elif process.info["name"] == "postgres":
                found.setdefault(SHARED[1], []).append(process)
        return found

    def snapshot(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, processes in self._processes().items():
            for process in processes:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue  # a database backend that exited since
                cpu[name] = cpu.get(name, 0.0) + times.user + times.system
        machine = psutil.cpu_times()
        cpu["machine busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        cpu["machine wall"] = time.monotonic() * (psutil.cpu_count() or 1)
        return cpu

    @staticmethod
    def per_unit(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
        """CPU milliseconds per unit (order, workflow, message) of each process over an interval."""
        return {
            name: (after[name] - before.get(name, 0.0)) * 1000 / units
            for name in after
            if not name.startswith("machine")
        }

    @staticmethod
    def busy(before: dict[str, float], after: dict[str, float]) -> float:
        """Share of the machine's CPU time that was busy over the interval (all cores, 0..1)."""
        wall = after["machine wall"] - before["machine wall"]
        return (after["machine busy"] - before["machine busy"]) / wall if wall else 0.0

    def peak_memory(self) -> dict[str, float]:
        """Peak resident memory of each stack process in MiB (VmHWM)."""
        peaks: dict[str, float] = {}
        for name, component in self._stack.components.items():
            if component.running:
                peak = peak_rss_bytes(component.pid)
                if peak is not None:
                    peaks[name] = peak / 2**20
        peaks["bench client"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peaks


@dataclass
class Bench:
    args: argparse.Namespace
    stack: LocalStack
    database: Database
    meter: Meter
    http: httpx.AsyncClient
    results: dict[str, Any] = field(default_factory=dict)
    shipped_workflow: str = ""

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # --- the floor: bare workflows

    async def bare_phase(
        self,
        workflow: str,
        label: str,
        count: int | None = None,
        rate: float | None = None,
        seconds: float = 0,
    ) -> dict[str, Any]:
        """Start `count` workflows at once (rate None) or at `rate` per second for `seconds`; time them."""
        client = self.stack.temporal
        prefix = f"{label}-{uuid.uuid4().hex[:6]}"
        total = count if rate is None else max(1, int(rate * seconds))
        sent: dict[str, float] = {}
        start_rpc: list[float] = []
        limit = asyncio.Semaphore(64)

        async def start(i: int) -> None:
            async with limit:
                workflow_id = f"{prefix}-{i}"
                sent[workflow_id], clock = time.time(), time.perf_counter()
                await client.start_workflow(workflow, id=workflow_id, task_queue=BARE_QUEUE)
                start_rpc.append(time.perf_counter() - clock)

        before = self.meter.snapshot()
        await self._drive(start, total or 0, rate)
        closes = await self._closed(workflow, prefix, total or 0)
        after = self.meter.snapshot()
        latencies = [closes[wid] - sent[wid] for wid in sent]
        span = max(closes.values()) - min(sent.values())
        result: dict[str, Any] = {
            "workflow": workflow,
            "count": total,
            "offered_rate": rate,
            "seconds": span,
            "per_second": (total or 0) / span,
            "latency_ms": percentiles(latencies),
            "start_rpc_ms": percentiles(start_rpc),
            "cpu_ms_per_workflow": Meter.per_unit(before, after, total or 1),
            "machine_busy": Meter.busy(before, after),
        }
        self.log(
            f"{label}: {total} {workflow} in {span:.1f}s = {result['per_second']:.1f}/s, "
            f"p50 {result['latency_ms']['p50']:.0f} ms, machine busy {result['machine_busy']:.0%}"
        )
        return result

    async def _drive(self, task: Callable[[int], Awaitable[None]], total: int, rate: float | None) -> None:
        """Run task(0..total-1): all at once, or started on an open-loop schedule of `rate` per second."""
        if rate is None:
            await asyncio.gather(*(task(i) for i in range(total)))
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        running = []
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            running.append(asyncio.ensure_future(task(i)))
        await asyncio.gather(*running)

    async def _closed(self, workflow: str, prefix: str, total: int) -> dict[str, float]:
        """Close times (epoch seconds) of the phase's workflows, once all have completed."""
        client = self.stack.temporal
        deadline = time.monotonic() + self.args.phase_timeout
        while True:
            closes = {
                execution.id: execution.close_time.timestamp()
                async for execution in client.list_workflows(
                    f"WorkflowType='{workflow}' AND ExecutionStatus='Completed'"
                )
                if execution.id.startswith(prefix) and execution.close_time is not None
            }
            if len(closes) >= total:
                return closes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workflow}: {len(closes)}/{total} completed")
            await asyncio.sleep(0.5)

    # --- end to end

    async def e2e_phase(
        self,
        label: str,
        count: int | None = None,
        rate: float | None = None,
        seconds: float = 0,
        before_wait: Callable[[], Awaitable[None]] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> dict[str, Any]:
        """Place orders over HTTP (a burst, or open loop at `rate`); done once every reactor applied them."""
        total = count if rate is None else max(1, int(rate * seconds))
        sent: dict[str, float] = {}
        post_ms: list[float] = []
        limit = asyncio.Semaphore(self.args.concurrency if rate is None else 10_000)

        async def place(i: int) -> None:
            async with limit:
                at, clock = time.time(), time.perf_counter()
                response = await (http or self.http).post(
                    "/orders",
                    json=order_body(f"cust-{i % 50}"),
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                post_ms.append(time.perf_counter() - clock)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /orders: {response.status_code} {response.text}")
                sent[str(response.json()["order_id"])] = at

        before = self.meter.snapshot()
        await self._drive(place, total or 0, rate)
        if before_wait is not None:
            await before_wait()
        done = await self._applied(sent)
        after = self.meter.snapshot()
        shipped = await self._shipped_at(list(sent))
        span = max(done.values()) - min(sent.values())
        completions = sorted(done.values())
        tenth, ninetieth = completions[len(completions) // 10], completions[(len(completions) * 9) // 10]
        result: dict[str, Any] = {
            "count": total,
            "offered_rate": rate,
            "seconds": span,
            "per_second": (total or 0) / span,
            "per_second_middle_80pct": 0.8 * (total or 0) / (ninetieth - tenth)
            if ninetieth > tenth
            else None,
            "latency_ms": percentiles([done[o] - sent[o] for o in sent]),
            "saga_latency_ms": percentiles([shipped[o] - sent[o] for o in sent]),
            "events_lag_ms": percentiles([done[o] - shipped[o] for o in sent]),
            "post_latency_ms": percentiles(post_ms),
            "cpu_ms_per_order": Meter.per_unit(before, after, total or 1),
            "machine_busy": Meter.busy(before, after),
        }
        self.shipped_workflow = workflow_id_for(next(iter(sent)))
        self.log(
            f"{label}: {total} orders in {span:.1f}s = {result['per_second']:.1f}/s, p50 "
            f"{result['latency_ms']['p50']:.0f} ms, p99 {result['latency_ms']['p99']:.0f} ms, "
            f"POST p99 {result['post_latency_ms']['p99']:.0f} ms, machine busy {result['machine_busy']:.0%}"
        )
        return result

    async def _applied(self, sent: dict[str, float]) -> dict[str, float]:
        """When each order was applied by all three reactors: its last inbox row (epoch seconds)."""
        ids = list(sent)
        deadline = time.monotonic() + self.args.phase_timeout
        while True:
            done: dict[str, float] = {}
            async with self.database.sessions() as session:
                for chunk in range(0, len(ids), 500):
                    rows = await session.execute(
                        select(InboxMessage.subject, func.count(), func.max(InboxMessage.processed_at))
                        .where(InboxMessage.subject.in_(ids[chunk : chunk + 500]))
                        .group_by(InboxMessage.subject)
                    )
                    for subject, applied, last in rows:
                        if applied >= len(REACTOR_NAMES) and subject is not None:
                            done[subject] = last.timestamp()
            if len(done) == len(ids):
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)}/{len(ids)} orders applied by every reactor")
            await asyncio.sleep(0.5)

    async def _shipped_at(self, ids: list[str]) -> dict[str, float]:
        async with self.database.sessions() as session:
            rows = await session.execute(
                select(models.OrderStatusChange.order_id, models.OrderStatusChange.created_at).where(
                    models.OrderStatusChange.order_id.in_(ids),
                    models.OrderStatusChange.status == OrderStatus.SHIPPED,
                )
            )
            return {order_id: at.timestamp() for order_id, at in rows}

    # --- the reactors against a raw consumer

    async def reactor_phase(self, count: int) -> dict[str, Any]:
        for name in REACTOR_NAMES:
            await self.stack.components[f"reactor-{name}"].stop()
        bodies = [(event.id, encode_event(event)) for event in synthetic_shipped_events(count)]
        ids = [event_id for event_id, _ in bodies]
        await publish_all(
            self.stack.settings, self.stack.topology.exchange, ORDER_SHIPPED_V1.routing_key, bodies
        )
        result: dict[str, Any] = {"messages": count}
        for name in REACTOR_NAMES:
            before = self.meter.snapshot()
            await self.stack.start_component(f"reactor-{name}")
            first, last = await self._inbox_span(name, ids)
            after = self.meter.snapshot()
            rate = (count - 1) / (last - first) if last > first else float("inf")
            result[name] = {
                "per_second": rate,
                "ledger_troubles": await self._troubles(name),
                "cpu_ms_per_message": Meter.per_unit(before, after, count)[f"reactor-{name}"],
            }
            self.log(f"reactor {name}: {count} messages at {rate:.0f}/s")
        result["raw_aio_pika"] = await raw_consume(
            self.stack.settings, f"{self.stack.topology.namespace}.rawbench", bodies
        )
        self.log(f"raw aio-pika consume: {result['raw_aio_pika']['per_second']:.0f}/s")
        return result

    async def _inbox_span(self, consumer: str, ids: list[str]) -> tuple[float, float]:
        deadline = time.monotonic() + self.args.phase_timeout
        while True:
            async with self.database.sessions() as session:
                applied, first, last = (
                    await session.execute(
                        select(
                            func.count(),
                            func.min(InboxMessage.processed_at),
                            func.max(InboxMessage.processed_at),
                        )
                        .where(InboxMessage.consumer == consumer)
                        .where(InboxMessage.message_id.in_(ids))
                    )
                ).one()
            if applied >= len(ids):
                return first.timestamp(), last.timestamp()
            if time.monotonic() > deadline:
                troubles = await self._troubles(consumer)
                raise TimeoutError(f"{consumer}: {applied}/{len(ids)} messages applied; ledger: {troubles}")
            await asyncio.sleep(0.25)

    async def _troubles(self, consumer: str) -> dict[str, Any]:
        """Retries and dead letters of a reactor in the ledger, with a sample of their reasons."""
        async with self.database.sessions() as session:
            rows = (
                await session.execute(
                    select(DeliveryRecord.outcome, DeliveryRecord.detail).where(
                        DeliveryRecord.consumer == consumer,
                        DeliveryRecord.outcome.in_(
                            [DeliveryOutcome.RETRY_SCHEDULED, DeliveryOutcome.DEAD_LETTERED]
                        ),
                    )
                )
            ).all()
        return {
            "retries": sum(outcome == DeliveryOutcome.RETRY_SCHEDULED for outcome, _ in rows),
            "dead_lettered": sum(outcome == DeliveryOutcome.DEAD_LETTERED for outcome, _ in rows),
            "reasons": sorted({(detail or "")[:200] for _, detail in rows})[:3],
        }

    # --- round trips

    async def history(self, workflow_id: str) -> dict[str, int]:
        history = await self.stack.temporal.get_workflow_handle(workflow_id).fetch_history()
        events = Counter(
            HistoryEventType.Name(event.event_type).removeprefix("EVENT_TYPE_") for event in history.events
        )
        return {
            "history_events": len(history.events),
            "workflow_tasks": events["WORKFLOW_TASK_COMPLETED"],
            "activity_tasks": events["ACTIVITY_TASK_SCHEDULED"],
            "local_activities": events["MARKER_RECORDED"],
            "search_attribute_upserts": events["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"],
            # Each workflow or activity task is a poll and a completion; plus the start request.
            "server_round_trips": 1
            + 2 * (events["WORKFLOW_TASK_COMPLETED"] + events["ACTIVITY_TASK_SCHEDULED"]),
        }


def synthetic_shipped_events(count: int) -> list[Any]:
    """Valid order.shipped.v1 events with ids of their own, as the relay would publish them."""
    now = datetime.now(UTC)
    events = []
    for i in range(count):
        order_id = str(uuid.uuid4())
        line = OrderLineV1(sku="SKU-BENCH", quantity=1, unit_price=1_999, line_total=1_999)
        payload = OrderShippedV1(
            order_id=order_id,
            customer_id=f"cust-{i % 50}",
            customer_email=f"cust-{i % 50}@example.com",
            currency="EUR",
            total_amount=1_999,
            lines=(line,),
            shipment=ShipmentV1(carrier="bench", tracking_number=f"TRK{i}"),
            shipped_at=now,
        )
        events.append(
            new_event(ORDER_SHIPPED_V1, event_id=str(uuid.uuid4()), subject=order_id, time=now, data=payload)
        )
    return events


async def publish_all(
    settings: Settings, exchange: str, routing_key: str, bodies: list[tuple[str, bytes]]
) -> None:
    """Persistent, confirmed publishes, a hundred confirms awaited at a time."""
    connection = await connect(settings, "bench-publish")
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False) if exchange else channel.default_exchange
        for chunk in range(0, len(bodies), 100):
            await asyncio.gather(
                *(
                    target.publish(
                        aio_pika.Message(
                            body,
                            message_id=message_id,
                            type=routing_key,
                            content_type=STRUCTURED_CONTENT_TYPE,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=routing_key,
                    )
                    for message_id, body in bodies[chunk : chunk + 100]
                )
            )
    finally:
        await close_quietly(connection, 10)


async def raw_consume(settings: Settings, queue_name: str, bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The same messages from a quorum queue, consumed with aio-pika alone: manual ack, the same prefetch."""
    connection = await connect(settings, "bench-raw")
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.reactor_prefetch)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 20}
        )
        await publish_all(settings, "", queue_name, bodies)
        received = 0
        first = last = 0.0
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received, first, last
            if received == 0:
                first = time.perf_counter()
            await message.ack()
            received += 1
            if received == len(bodies):
                last = time.perf_counter()
                finished.set()

        process = psutil.Process()
        cpu = process.cpu_times()
        tag = await queue.consume(on_message)
        await asyncio.wait_for(finished.wait(), 120)
        cpu_after = process.cpu_times()
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        seconds = last - first
        return {
            "per_second": (len(bodies) - 1) / seconds if seconds else float("inf"),
            "cpu_ms_per_message": (cpu_after.user + cpu_after.system - cpu.user - cpu.system)
            * 1000
            / len(bodies),
            "prefetch": settings.reactor_prefetch,
        }
    finally:
        await close_quietly(connection, 10)


def machine() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "rabbitmq": run(shutil.which("rabbitmqctl") or "rabbitmqctl", "version"),
        "temporal_cli": run(executable("temporal"), "--version"),
        "load_average_at_start": os.getloadavg(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "started_at": datetime.now(UTC).isoformat(),
        "options": vars(args),
    }
    async with empty_database("postgresql", workdir) as url:
        await migrate(url)
        options = StackOptions(
            workdir=workdir,
            database_url=url,
            namespace="bench-" + uuid.uuid4().hex[:8],
            log_level="WARNING",
            server_extra_flags=(*NAMESPACE_COUNT_FLAG, *args.server_flag),
        )
        stack = LocalStack(options)
        database = open_database(stack.settings)
        try:
            await stack.start()
            await stack.python_component("bare-worker", "bench.bare", BARE_QUEUE).start()
            async with database.sessions() as session:
                results["machine"]["postgresql"] = await session.scalar(text("SHOW server_version"))
            async with httpx.AsyncClient(
                base_url=stack.api_url,
                headers=AUTH,
                timeout=60,
                limits=httpx.Limits(
                    max_connections=args.concurrency, max_keepalive_connections=args.concurrency
                ),
            ) as http:
                response = await http.post(
                    "/products",
                    json={
                        "sku": "SKU-BENCH",
                        "name": "Bench",
                        "unit_price": 1_999,
                        "currency": "EUR",
                        "initial_stock": 10**9,
                    },
                )
                response.raise_for_status()
                bench = Bench(args, stack, database, Meter(stack), http)
                bench.log(f"stack up (API {stack.api_url}, Temporal {stack.temporal_address}); warming up")
                await bench.e2e_phase("warm-up e2e", count=args.warmup)
                await bench.bare_phase("BareWorkflow", "warm-up bare", count=args.warmup)
                await bench.bare_phase("BareLocalWorkflow", "warm-up bare-local", count=args.warmup // 2)

                bare = results["bare"] = {}
                bare["max"] = await bench.bare_phase("BareWorkflow", "bare max", count=args.bare_workflows)
                bare["local_activities_max"] = await bench.bare_phase(
                    "BareLocalWorkflow", "bare local max", count=args.variant_workflows
                )
                bare["with_upserts_max"] = await bench.bare_phase(
                    "BareUpsertWorkflow", "bare upserts max", count=args.variant_workflows
                )
                bare["half_rate"] = await bench.bare_phase(
                    "BareWorkflow",
                    "bare half rate",
                    rate=bare["max"]["per_second"] / 2,
                    seconds=args.steady_seconds,
                )

                e2e = results["e2e"] = {}
                e2e["max"] = await bench.e2e_phase("e2e max", count=args.e2e_orders)
                steady = args.steady_rate or e2e["max"]["per_second"] / 2
                e2e["half_rate"] = await bench.e2e_phase(
                    "e2e half rate", rate=steady, seconds=args.steady_seconds
                )
                results["api_post"] = await bench.e2e_phase(
                    f"POST at {args.api_rps:g}/s", rate=args.api_rps, seconds=args.api_seconds
                )
                # The same POSTs with no saga running beside them: what the API costs without contention.
                await stack.components["worker"].stop()
                results["api_post_worker_stopped"] = await bench.e2e_phase(
                    f"POST at {args.api_rps:g}/s, worker stopped",
                    rate=args.api_rps,
                    seconds=args.api_seconds,
                    before_wait=lambda: stack.start_component("worker"),
                )

                histories = {"OrderWorkflow (shipped)": await bench.history(bench.shipped_workflow)}
                peaks = bench.meter.peak_memory()
                if args.what_if:
                    # Idle from here on; their pools would count against PostgreSQL's connection limit.
                    await stack.components["api"].stop()
                    await stack.components["worker"].stop()
                    results["what_if_local_steps"] = await what_if(bench, stack, args)
                    histories["what-if local steps"] = await bench.history(bench.shipped_workflow)
                results["histories"] = {
                    **histories,
                    "BareWorkflow": await bench.history(await first_id(stack, "BareWorkflow")),
                    "BareLocalWorkflow": await bench.history(await first_id(stack, "BareLocalWorkflow")),
                    "BareUpsertWorkflow": await bench.history(await first_id(stack, "BareUpsertWorkflow")),
                }
                results["reactors"] = await bench.reactor_phase(args.reactor_messages)
                results["peak_memory_mib"] = {
                    **peaks,
                    **results.get("what_if_local_steps", {}).get("peak_memory_mib", {}),
                    **bench.meter.peak_memory(),
                }
        except BaseException:
            print(f"logs kept in {workdir}/logs", flush=True)
            raise
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            await database.dispose()
            await stack.stop()
    results["finished_at"] = datetime.now(UTC).isoformat()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["targets"] = targets(results)
    return results


async def what_if(bench: Bench, stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """The e2e phases again with `bench.whatif` (local-activity steps, no upserts) behind a second API."""
    queue, port = "orders-whatif-" + uuid.uuid4().hex[:6], free_port()
    env = {"TEMPORAL_TASK_QUEUE": queue, "API_PORT": str(port)}
    worker = stack.python_component("whatif-worker", "bench.whatif", env=env)
    api = stack.python_component("whatif-api", "entrypoints.api", env=env)
    await worker.start()
    await api.start()
    url = f"http://127.0.0.1:{port}"
    await stack.wait_for_http("whatif-api", url)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    try:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as http:
            await bench.e2e_phase("what-if warm-up", count=args.warmup, http=http)
            result = {"max": await bench.e2e_phase("what-if e2e max", count=args.e2e_orders, http=http)}
            result["half_rate"] = await bench.e2e_phase(
                "what-if e2e half rate",
                rate=args.steady_rate or result["max"]["per_second"] / 2,
                seconds=args.steady_seconds,
                http=http,
            )
        result["peak_memory_mib"] = {
            name: mib for name, mib in bench.meter.peak_memory().items() if name.startswith("whatif")
        }
        return result
    finally:
        await api.stop()
        await worker.stop()


async def first_id(stack: LocalStack, workflow: str) -> str:
    async for execution in stack.temporal.list_workflows(
        f"WorkflowType='{workflow}' AND ExecutionStatus='Completed'"
    ):
        return execution.id
    raise LookupError(workflow)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, read from this run's figures: (name, measured, wanted, met)."""
    bare, e2e, reactors = results["bare"], results["e2e"], results["reactors"]
    raw = reactors["raw_aio_pika"]["per_second"]
    slowest = min(REACTOR_NAMES, key=lambda name: reactors[name]["per_second"])
    what_if = results.get("what_if_local_steps")
    rows = [
        (
            "e2e orders/s >= bare three-activity workflows/s",
            e2e["max"]["per_second"],
            bare["max"]["per_second"],
            e2e["max"]["per_second"] >= bare["max"]["per_second"],
        ),
        (
            "e2e p50 at half max rate <= 2 x bare p50 at half its max rate (ms)",
            e2e["half_rate"]["latency_ms"]["p50"],
            2 * bare["half_rate"]["latency_ms"]["p50"],
            e2e["half_rate"]["latency_ms"]["p50"] <= 2 * bare["half_rate"]["latency_ms"]["p50"],
        ),
        (
            f"reactor consume >= half raw aio-pika (slowest: {slowest}, msg/s)",
            reactors[slowest]["per_second"],
            raw / 2,
            reactors[slowest]["per_second"] >= raw / 2,
        ),
        (
            f"POST /orders p99 < 50 ms at {results['options']['api_rps']:g} rps (ms)",
            results["api_post"]["post_latency_ms"]["p99"],
            50.0,
            results["api_post"]["post_latency_ms"]["p99"] < 50,
        ),
    ]
    if what_if is not None:
        rows += [
            (
                "(what-if local steps) e2e orders/s >= bare workflows/s",
                what_if["max"]["per_second"],
                bare["max"]["per_second"],
                what_if["max"]["per_second"] >= bare["max"]["per_second"],
            ),
            (
                "(what-if local steps) e2e p50 at half max <= 2 x bare p50 (ms)",
                what_if["half_rate"]["latency_ms"]["p50"],
                2 * bare["half_rate"]["latency_ms"]["p50"],
                what_if["half_rate"]["latency_ms"]["p50"] <= 2 * bare["half_rate"]["latency_ms"]["p50"],
            ),
        ]
    return [
        {"target": name, "measured": measured, "wanted": wanted, "met": met}
        for name, measured, wanted, met in rows
    ]


def _loads(loads: Sequence[float]) -> str:
    return " ".join(f"{load:.2f}" for load in loads)


def summary(results: dict[str, Any]) -> str:
    m = results["machine"]
    bare, e2e = results["bare"], results["e2e"]
    lines = [
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"RabbitMQ {m['rabbitmq']}, PostgreSQL {m.get('postgresql')}, "
        f"load average at start {_loads(m['load_average_at_start'])}, "
        f"at end {_loads(m['load_average_at_end'])}",
        "",
        f"{'phase':38} {'rate/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'busy':>6}",
    ]
    rows = [
        ("bare 3 activities, max", bare["max"]),
        ("bare 3 local activities, max", bare["local_activities_max"]),
        ("bare 3 activities + 3 upserts, max", bare["with_upserts_max"]),
        ("bare 3 activities, half max rate", bare["half_rate"]),
        ("e2e, max", e2e["max"]),
        ("e2e, half max rate", e2e["half_rate"]),
        (f"e2e at {results['options']['api_rps']:g} POST/s", results["api_post"]),
    ]
    if "what_if_local_steps" in results:
        rows += [
            ("what-if local steps, max", results["what_if_local_steps"]["max"]),
            ("what-if local steps, half max rate", results["what_if_local_steps"]["half_rate"]),
        ]
    for name, row in rows:
        latency = row["latency_ms"]
        lines.append(
            f"{name:38} {row['per_second']:>8.1f} {latency['p50']:>8.0f} {latency['p95']:>8.0f} "
            f"{latency['p99']:>8.0f} {row['machine_busy']:>6.0%}"
        )
    post = results["api_post"]["post_latency_ms"]
    quiet = results["api_post_worker_stopped"]["post_latency_ms"]
    start_rpc = bare["half_rate"]["start_rpc_ms"]
    lines += [
        "",
        f"e2e max: saga part p50 {e2e['max']['saga_latency_ms']['p50']:.0f} ms, events part p50 "
        f"{e2e['max']['events_lag_ms']['p50']:.0f} ms; ratio e2e/bare throughput "
        f"{e2e['max']['per_second'] / bare['max']['per_second']:.2f}",
        f"POST /orders at {results['options']['api_rps']:g}/s: p50 {post['p50']:.1f} ms, "
        f"p95 {post['p95']:.1f} ms, "
        f"p99 {post['p99']:.1f} ms, max {post['max']:.1f} ms; with the worker stopped: p50 "
        f"{quiet['p50']:.1f} ms, p99 {quiet['p99']:.1f} ms; Temporal start RPC alone (bare half rate): p50 "
        f"{start_rpc['p50']:.1f} ms, p99 {start_rpc['p99']:.1f} ms",
        "Reactor consume (msg/s): "
        + ", ".join(f"{name} {results['reactors'][name]['per_second']:.0f}" for name in REACTOR_NAMES)
        + f"; raw aio-pika {results['reactors']['raw_aio_pika']['per_second']:.0f}",
        "",
        "CPU ms per order at e2e max (per workflow for bare max):",
    ]
    cpu_e2e, cpu_bare = e2e["max"]["cpu_ms_per_order"], bare["max"]["cpu_ms_per_workflow"]
    cpu_what_if = results.get("what_if_local_steps", {}).get("max", {}).get("cpu_ms_per_order", {})
    for name in sorted(cpu_e2e, key=lambda n: -cpu_e2e[n]):
        lines.append(
            f"  {name:24} {cpu_e2e[name]:8.1f}   (bare: {cpu_bare.get(name, 0.0):6.1f}"
            + (f", what-if: {cpu_what_if.get(name, 0.0):6.1f}" if cpu_what_if else "")
            + ")"
        )
    if cpu_what_if:
        for name in ("whatif-worker", "whatif-api"):
            lines.append(f"  {name:24} {'':8}   (what-if: {cpu_what_if.get(name, 0.0):6.1f})")
    lines.append(f"  {'total (all processes)':24} {sum(cpu_e2e.values()):8.1f}")
    lines += ["", "CPU ms per workflow of the floor variants (server, worker):"]
    for name, key in (
        ("3 activities", "max"),
        ("3 local", "local_activities_max"),
        ("+3 upserts", "with_upserts_max"),
    ):
        row = bare[key]["cpu_ms_per_workflow"]
        lines.append(f"  {name:14} temporal {row['temporal']:6.1f}, bare-worker {row['bare-worker']:6.1f}")
    lines += ["", "Server round trips per workflow (from histories):"]
    for name, counts in results["histories"].items():
        lines.append(
            f"  {name:26} round trips {counts['server_round_trips']:>3}, "
            f"workflow tasks {counts['workflow_tasks']}, "
            f"activity tasks {counts['activity_tasks']}, local activities {counts['local_activities']}, "
            f"upserts {counts['search_attribute_upserts']}, history events {counts['history_events']}"
        )
    lines += ["", "Peak resident memory (MiB):"]
    lines.append("  " + ", ".join(f"{name} {mib:.0f}" for name, mib in results["peak_memory_mib"].items()))
    lines += ["", "Targets:"]
    for target in results["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"  [{verdict}] {target['target']}: {target['measured']:.1f} vs {target['wanted']:.1f}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bare, e2e, reactors = results["bare"], results["e2e"], results["reactors"]
    figure, axes = plt.subplots(2, 3, figsize=(16, 9))
    (throughput, latency, consume), (cpu, memory, trips) = axes

    names = ["bare 3 act.", "bare 3 local", "bare + upserts", "e2e"]
    what_if = results.get("what_if_local_steps")
    values = [
        bare["max"]["per_second"],
        bare["local_activities_max"]["per_second"],
        bare["with_upserts_max"]["per_second"],
        e2e["max"]["per_second"],
    ]
    colors = ["#888", "#aaa", "#bbb", "#1f77b4"]
    if what_if is not None:
        names.append("what-if e2e")
        values.append(what_if["max"]["per_second"])
        colors.append("#2ca02c")
    throughput.bar(names, values, color=colors)
    throughput.tick_params(axis="x", labelrotation=15)
    throughput.set_title("maximum throughput (per second)")

    series = {
        "bare @ half max": bare["half_rate"]["latency_ms"],
        "e2e @ half max": e2e["half_rate"]["latency_ms"],
        "POST /orders @ 20/s": results["api_post"]["post_latency_ms"],
        **({"what-if e2e @ half max": what_if["half_rate"]["latency_ms"]} if what_if is not None else {}),
    }
    width = 0.8 / len(series)
    for offset, (name, values_ms) in enumerate(series.items()):
        latency.bar(
            [i + offset * width for i in range(3)],
            [values_ms["p50"], values_ms["p95"], values_ms["p99"]],
            width,
            label=name,
        )
    latency.set_xticks([i + 0.4 - width / 2 for i in range(3)], ["p50", "p95", "p99"])
    latency.set_yscale("log")
    latency.set_title("latency (ms)")
    latency.legend()

    consume.bar(
        [*REACTOR_NAMES, "raw aio-pika"],
        [*(reactors[n]["per_second"] for n in REACTOR_NAMES), reactors["raw_aio_pika"]["per_second"]],
        color=["#1f77b4"] * 3 + ["#888"],
    )
    consume.set_yscale("log")
    consume.set_title("consume (messages/s, log scale)")

    cpu_e2e = {k: v for k, v in e2e["max"]["cpu_ms_per_order"].items() if v >= 0.05}
    cpu.barh(list(cpu_e2e), list(cpu_e2e.values()))
    cpu.set_title("CPU ms per order (e2e max)")

    peaks = results["peak_memory_mib"]
    memory.barh(list(peaks), list(peaks.values()))
    memory.set_title("peak resident memory (MiB)")

    histories = results["histories"]
    trips.bar(
        [name.split(" ")[0] for name in histories], [h["server_round_trips"] for h in histories.values()]
    )
    trips.set_title("server round trips per workflow")
    trips.tick_params(axis="x", labelrotation=15)

    figure.suptitle(
        f"order saga benchmark, {results['started_at'][:19]}Z, {results['machine']['nproc']} cores"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=30, help="orders and bare workflows before measuring")
    parser.add_argument("--bare-workflows", type=int, default=400, help="BareWorkflow burst size")
    parser.add_argument(
        "--variant-workflows", type=int, default=300, help="local / upsert variants' burst size"
    )
    parser.add_argument("--e2e-orders", type=int, default=300, help="order burst size (max throughput)")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections of the order burst")
    parser.add_argument(
        "--steady-rate", type=float, help="orders/s of the steady phase (default: half the max)"
    )
    parser.add_argument("--steady-seconds", type=float, default=20, help="length of the half-rate phases")
    parser.add_argument("--api-rps", type=float, default=20)
    parser.add_argument("--api-seconds", type=float, default=15)
    parser.add_argument("--reactor-messages", type=int, default=2000)
    parser.add_argument(
        "--what-if",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure bench.whatif (the saga with local-activity steps, no upserts)",
    )
    parser.add_argument("--phase-timeout", type=float, default=300, help="give up on a phase after this (s)")
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="extra `temporal server start-dev` argument (repeat), e.g. --server-flag=--dynamic-config-value "
        "--server-flag=history.transferProcessorMaxPollRPS=1000",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path, png_path = RESULTS / f"bench-{stamp}.json", RESULTS / f"bench-{stamp}.png"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    plot(results, png_path)
    print("\n" + summary(results))
    print(f"\nresults: {json_path.relative_to(ROOT)}, {png_path.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
