"""End-to-end benchmark: the saga against its bare floor, in one run, per variant. Prints figures, JSON.

    make bench                     # python -m bench.e2e: one variant (the settings' defaults), 3 repeats
    python -m bench.e2e --variant 'on WORKFLOW_SANDBOX=true' --variant 'off WORKFLOW_SANDBOX=false'
    python -m bench.e2e --quick    # tiny sizes, one repeat: checks that it all runs (CI)

One fresh PostgreSQL database, one Temporal dev server (the Procfile's flags), every component in its own
process (`ops.launcher`) with WORK_COUNTERS_DIR set (`observability.counters`), and a worker for the floor
(`bench.bare`). A variant is a name and settings (environment variables) given to every launched process;
switching variants restarts them all (not the dev server). The variants are measured alternately, A B A B ...,
`--repeats` times each; each repeat measures:

1. the floor: a burst of `BareWorkflow` (three no-op activities, the saga worker's workflow runner under the
   variant's settings), timed from the first start to the last result (the bench waits on each result);
2. end to end: a burst of POST /orders, each done when all three reactors applied its event (inbox rows);
   CPU, database and SMTP work per order by component, Temporal round trips and billable actions.

Each variant's last repeat adds: POST /orders latency in an open loop at half its median maximum rate, then
Temporal's StartWorkflow RPC latency at the same rate; and the reactors' consume rates against raw clients
(`bench.consume`). At the end the first variant's floor is measured again: a floor that drifted more than
10% from its first measurement is reported (the box's load changed under the run).
The summary's last line is `e2e_to_bare_ratio: <x>`: the first variant's median ratio of throughputs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from bench.consume import consume_phase, summary_lines
from bench.meter import BENCH_APPLICATION_NAME, Meter, history_costs
from domain.model import workflow_id_for
from infra.settings import Settings
from ops.launcher import NAMESPACE_COUNT_FLAG, REACTOR_NAMES, LocalStack, StackOptions
from ops.processes import peak_rss_bytes
from ops.provisioning import ROOT, empty_database, executable, migrate
from reactors.models import InboxMessage

RESULTS = ROOT / "results"
AUTH = {"Authorization": f"Bearer {Settings.DEVELOPMENT_API_KEY}"}
BARE_QUEUE = "bench-bare"
DRIFT_LIMIT = 0.10
HISTORY_SAMPLE = 10
# The work counts the summary shows (the JSON has every count: statements, checkouts, connects, mails).
WORK_SHOWN = ("db_transactions", "db_round_trips", "smtp_replies", "smtp_connections")
# Restarted on a variant switch, in this order; the dev server and the SMTP sink keep running.
SERVICE_ORDER = ("reactor-", "relay", "worker", "api", "bare-worker")


@dataclass(frozen=True)
class Variant:
    """A name and the settings (environment variables) every launched process gets for it."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """`"unsandboxed WORKFLOW_SANDBOX=false OTHER=1"` -> Variant("unsandboxed", {...})."""
        name, *assignments = spec.split()
        env = {}
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"{assignment!r}: expected KEY=VALUE")
            env[key.upper()] = value
        return cls(name, env)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of values in seconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1] * 1000}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a figure over repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


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


async def drive(task: Callable[[int], Awaitable[None]], total: int, rate: float | None) -> None:
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


@contextlib.asynccontextmanager
async def launched_stack(
    extra_env: Mapping[str, str], server_flags: Sequence[str] = ()
) -> AsyncIterator[tuple[LocalStack, AsyncEngine, Meter]]:
    """A stack on a fresh database with work counters on, the floor's worker, the bench's product; its
    logs are kept (and their place printed) if the body fails."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    counters = workdir / "counters"
    async with empty_database("postgresql", workdir) as url:
        await migrate(url)
        stack = LocalStack(
            StackOptions(
                workdir=workdir,
                database_url=url,
                namespace="bench-" + uuid.uuid4().hex[:8],
                extra_env={**extra_env, "WORK_COUNTERS_DIR": str(counters)},
                server_extra_flags=(*NAMESPACE_COUNT_FLAG, *server_flags),
            )
        )
        engine = create_async_engine(
            url, pool_size=4, connect_args={"server_settings": {"application_name": BENCH_APPLICATION_NAME}}
        )
        try:
            await stack.start()
            await stack.python_component("bare-worker", "bench.bare", BARE_QUEUE).start()
            await wait_for_pollers(stack, BARE_QUEUE)
            async with httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=60) as http:
                product = {"sku": "SKU-BENCH", "name": "Bench", "unit_price": 1_999, "currency": "EUR"}
                (await http.post("/products", json={**product, "initial_stock": 10**9})).raise_for_status()
            async with Meter(stack, engine, counters) as meter:
                yield stack, engine, meter
        except BaseException:
            print(f"logs kept in {workdir}/logs", flush=True)
            raise
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            await engine.dispose()
            await stack.stop()


async def wait_for_pollers(stack: LocalStack, task_queue: str, within: float = 60) -> None:
    request = DescribeTaskQueueRequest(
        namespace="default",
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    async with asyncio.timeout(within):
        while True:
            if (await stack.temporal.workflow_service.describe_task_queue(request)).pollers:
                return
            await asyncio.sleep(0.2)


@dataclass
class Bench:
    args: argparse.Namespace
    stack: LocalStack
    engine: AsyncEngine
    meter: Meter
    http: httpx.AsyncClient
    base_env: dict[str, dict[str, str]] = field(default_factory=dict)
    current: Variant | None = None
    # The workflow runner each variant's floor (and so saga) worker used, as its log says.
    runners: dict[str, str] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # --- variants

    async def switch(self, variant: Variant) -> None:
        """Restart every service process with the variant's settings, then warm up (nothing if it is the
        current variant; no restart for a first variant without settings: the stack started that way)."""
        if variant == self.current:
            return
        names = [n for prefix in SERVICE_ORDER for n in self.stack.components if n.startswith(prefix)]
        if self.current is not None or variant.env:
            self.log(f"switching to variant {variant.name}: restarting {len(names)} processes")
            for name in reversed(names):
                await self.stack.components[name].stop()
            for name in names:
                component = self.stack.components[name]
                base = self.base_env.setdefault(name, dict(component.env))
                component.env = {**base, **variant.env}
                await component.start()
            await self.stack.wait_for_reactors()
            await self.stack.wait_for_worker()
            await self.stack.wait_for_http("api", self.stack.api_url)
            await wait_for_pollers(self.stack, BARE_QUEUE)
        self.current = variant
        await self.e2e_phase("warm-up", count=self.args.warmup)
        await self.bare_phase("warm-up", count=self.args.warmup)
        # The restarted floor worker ran the warm-up, so its line is the log's last.
        said = self.stack.components["bare-worker"].log_path.read_text(errors="replace")
        self.runners[variant.name] = said.rpartition("workflow runner ")[2].split("\n", 1)[0] or "?"

    # --- the floor

    async def bare_phase(self, label: str, count: int, rate: float | None = None) -> dict[str, Any]:
        """`count` BareWorkflows started at once (or at `rate`/s); each timed to its result."""
        prefix = f"bare-{uuid.uuid4().hex[:8]}"
        client = self.stack.temporal
        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        start_rpc: list[float] = []
        limit = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            workflow_id = f"{prefix}-{i}"
            async with limit:
                sent[workflow_id] = clock = time.perf_counter()
                handle = await client.start_workflow("BareWorkflow", id=workflow_id, task_queue=BARE_QUEUE)
                start_rpc.append(time.perf_counter() - clock)
            await handle.result()
            done[workflow_id] = time.perf_counter()

        before = await self.meter.snapshot()
        await asyncio.wait_for(drive(one, count, rate), self.args.phase_timeout)
        after = await self.meter.snapshot()
        span = max(done.values()) - min(sent.values())
        result: dict[str, Any] = {
            "count": count,
            "offered_rate": rate,
            "per_second": count / span,
            "latency_ms": percentiles([done[w] - sent[w] for w in sent]),
            "start_rpc_ms": percentiles(start_rpc),
            "cost_per_workflow": Meter.cost(before, after, count),
            "temporal_per_workflow": await history_costs(client, list(sent)[:HISTORY_SAMPLE]),
        }
        self.log(f"{self._tag(label)} bare: {count} in {span:.1f}s = {result['per_second']:.1f}/s")
        return result

    # --- end to end

    async def e2e_phase(self, label: str, count: int, rate: float | None = None) -> dict[str, Any]:
        """`count` orders POSTed in a burst (or at `rate`/s); each done once all reactors applied it."""
        sent: dict[str, float] = {}
        post: list[float] = []
        limit = asyncio.Semaphore(self.args.concurrency if rate is None else 10_000)

        async def place(i: int) -> None:
            async with limit:
                at, clock = time.time(), time.perf_counter()
                response = await self.http.post(
                    "/orders",
                    json=order_body(f"cust-{i % 50}"),
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                post.append(time.perf_counter() - clock)
            if response.status_code != 202:
                raise RuntimeError(f"POST /orders: {response.status_code} {response.text}")
            sent[str(response.json()["order_id"])] = at

        before = await self.meter.snapshot()
        await drive(place, count, rate)
        done = await self._applied(sent)
        after = await self.meter.snapshot()
        span = max(done.values()) - min(sent.values())
        result: dict[str, Any] = {
            "count": count,
            "offered_rate": rate,
            "per_second": count / span,
            "latency_ms": percentiles([done[o] - sent[o] for o in sent]),
            "post_latency_ms": percentiles(post),
            "cost_per_order": Meter.cost(before, after, count),
            "temporal_per_order": await history_costs(
                self.stack.temporal, [workflow_id_for(o) for o in list(sent)[:HISTORY_SAMPLE]]
            ),
        }
        self.log(
            f"{self._tag(label)} e2e: {count} orders in {span:.1f}s = {result['per_second']:.1f}/s, "
            f"POST p99 {result['post_latency_ms']['p99']:.0f} ms"
        )
        return result

    async def _applied(self, sent: dict[str, float]) -> dict[str, float]:
        """When each order was applied by all three reactors: its last inbox row (epoch seconds)."""
        ids = list(sent)
        deadline = time.monotonic() + self.args.phase_timeout
        while True:
            done: dict[str, float] = {}
            async with self.engine.connect() as connection:
                for chunk in range(0, len(ids), 500):
                    rows = await connection.execute(
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
            await asyncio.sleep(0.25)

    def _tag(self, label: str) -> str:
        return f"[{self.current.name if self.current else '-'}] {label}"

    # --- one variant's extras, at its last repeat

    async def extras(self, max_rate: float) -> dict[str, Any]:
        rate = max_rate / 2
        seconds = self.args.steady_seconds
        half = await self.e2e_phase(f"half max ({rate:.1f}/s)", count=max(2, int(rate * seconds)), rate=rate)
        starts = await self.bare_phase(
            f"StartWorkflow at {rate:.1f}/s", count=max(2, int(rate * seconds)), rate=rate
        )
        consume = await consume_phase(
            self.stack,
            self.engine,
            self.meter,
            self.args.consume_messages,
            smtp_connections=self.args.raw_smtp_connections,
            within=self.args.phase_timeout,
            log=lambda message: self.log(self._tag(message)),
        )
        return {"rate": rate, "e2e": half, "start_workflow": starts, "consume": consume}


def schedule(variants: Sequence[Variant], repeats: int) -> list[tuple[Variant, int]]:
    """A B A B ...: each variant once per round, `repeats` rounds."""
    return [(variant, repeat) for repeat in range(repeats) for variant in variants]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    variants: list[Variant] = args.variant or [Variant("default")]
    results: dict[str, Any] = {
        "machine": machine(),
        "started_at": datetime.now(UTC).isoformat(),
        "options": {k: v for k, v in vars(args).items() if k not in ("variant", "results")},
        "variants": {v.name: dict(v.env) for v in variants},
        "order": [],
        "repeats": {v.name: [] for v in variants},
        "extras": {},
    }
    async with (
        launched_stack({}, args.server_flag) as (stack, engine, meter),
        httpx.AsyncClient(
            base_url=stack.api_url,
            headers=AUTH,
            timeout=60,
            limits=httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency),
        ) as http,
    ):
        async with engine.connect() as connection:
            results["machine"]["postgresql"] = await connection.scalar(text("SHOW server_version"))
        bench = Bench(args, stack, engine, meter, http)
        bench.log(f"stack up (API {stack.api_url}); variants {', '.join(v.name for v in variants)}")
        plan = schedule(variants, args.repeats)
        for variant, repeat in plan:
            await bench.switch(variant)
            results["order"].append(variant.name)
            runs = results["repeats"][variant.name]
            await meter.measure_background()
            bare = await bench.bare_phase(f"repeat {repeat + 1}", count=args.bare_workflows)
            e2e = await bench.e2e_phase(f"repeat {repeat + 1}", count=args.e2e_orders)
            runs.append({"bare": bare, "e2e": e2e, "ratio": e2e["per_second"] / bare["per_second"]})
            if repeat == args.repeats - 1:
                max_rate = statistics.median(r["e2e"]["per_second"] for r in runs)
                results["extras"][variant.name] = await bench.extras(max_rate)
        await bench.switch(variants[0])
        await meter.measure_background()
        results["floor_end"] = await bench.bare_phase("floor at the end", count=args.bare_workflows)
        results["machine"]["peak_rss_mib"] = peak_memory(stack)
        results["workflow_runners"] = bench.runners
    results["finished_at"] = datetime.now(UTC).isoformat()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["summary"] = summarize(results, variants)
    return results


def peak_memory(stack: LocalStack) -> dict[str, float]:
    """Peak resident memory (VmHWM) of each running stack process, MiB."""
    peaks = {name: peak_rss_bytes(c.pid) for name, c in stack.components.items() if c.running}
    return {name: peak / 2**20 for name, peak in peaks.items() if peak is not None}


def machine() -> dict[str, Any]:
    def output(*argv: str) -> str:
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
        "temporal_cli": output(executable("temporal"), "--version"),
        "load_average_at_start": os.getloadavg(),
    }


# --- the summary: medians over repeats, per variant


def _median_of(runs: Sequence[Mapping[str, Any]], path: Sequence[str]) -> dict[str, float] | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return spread(values) if values else None


def summarize(results: Mapping[str, Any], variants: Sequence[Variant]) -> dict[str, Any]:
    """Per variant: medians [min, max] over repeats of throughputs, ratio and per-order costs; the floor's
    drift; the issue's targets (read, never asserted)."""
    per_variant: dict[str, Any] = {}
    for variant in variants:
        runs = results["repeats"][variant.name]
        components = sorted({name for r in runs for name in r["e2e"]["cost_per_order"]["cpu_ms"]})
        counters = sorted(
            {(c, k) for r in runs for c, work in r["e2e"]["cost_per_order"]["work"].items() for k in work}
        )
        temporal_keys = sorted({k for r in runs for k in r["e2e"]["temporal_per_order"]})
        per_variant[variant.name] = {
            "bare_per_second": _median_of(runs, ("bare", "per_second")),
            "e2e_per_second": _median_of(runs, ("e2e", "per_second")),
            "ratio": _median_of(runs, ("ratio",)),
            "cpu_ms_per_order": {
                c: _median_of(runs, ("e2e", "cost_per_order", "cpu_ms", c)) for c in components
            },
            "cpu_ms_per_order_total": _median_of(runs, ("e2e", "cost_per_order", "cpu_ms_total")),
            "cpu_ms_per_bare_workflow": {
                c: _median_of(runs, ("bare", "cost_per_workflow", "cpu_ms", c))
                for c in ("temporal", "bare-worker")
            },
            "work_per_order": {
                f"{c}: {k}": _median_of(runs, ("e2e", "cost_per_order", "work", c, k))
                for c, k in counters
                if k in WORK_SHOWN
            },
            "work_total_per_order": {
                k: _median_of(runs, ("e2e", "cost_per_order", "work_total", k)) for k in WORK_SHOWN
            },
            "temporal_per_order": {
                k: _median_of(runs, ("e2e", "temporal_per_order", k)) for k in temporal_keys
            },
            "temporal_per_bare_workflow": {
                k: _median_of(runs, ("bare", "temporal_per_workflow", k)) for k in temporal_keys
            },
        }
    first = results["repeats"][variants[0].name][0]["bare"]["per_second"]
    end = results["floor_end"]["per_second"]
    drift = (end - first) / first
    reference = per_variant[variants[0].name]
    return {
        "variants": per_variant,
        "floor_drift": {"start": first, "end": end, "drift": drift, "over_limit": abs(drift) > DRIFT_LIMIT},
        "targets": targets(results, variants[0], reference),
        "e2e_to_bare_ratio": reference["ratio"]["median"],
    }


def targets(results: Mapping[str, Any], variant: Variant, figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for one variant: (target, measured, wanted, met)."""
    extras = results["extras"][variant.name]
    consume = extras["consume"]
    cpu, bare_cpu = figures["cpu_ms_per_order"], figures["cpu_ms_per_bare_workflow"]
    work = figures["work_total_per_order"]
    rows = [
        ("e2e throughput / bare floor >= 0.6", figures["ratio"]["median"], 0.6, None),
        ("Temporal server CPU ms per order < the bare workflow's", cpu["temporal"]["median"],
         bare_cpu["temporal"]["median"], "below"),
        ("database round trips per shipped order <= 70", work["db_round_trips"]["median"], 70, "at most"),
        *((f"{name} msg/s >= half {consume[name]['against']}'s", consume[name]["per_second"],
           consume[name]["raw_per_second"] / 2, None) for name in REACTOR_NAMES),
        ("POST p99 at half max <= 3 x StartWorkflow p99 (ms)", extras["e2e"]["post_latency_ms"]["p99"],
         3 * extras["start_workflow"]["start_rpc_ms"]["p99"], "at most"),
    ]  # fmt: skip
    return [
        {
            "target": name,
            "measured": measured,
            "wanted": wanted,
            "met": measured < wanted if how == "below" else measured <= wanted if how else measured >= wanted,
        }
        for name, measured, wanted, how in rows
    ]


def _fmt(spread_: Mapping[str, float] | None, digits: int = 1) -> str:
    if not spread_:
        return "-"
    return f"{spread_['median']:.{digits}f} [{spread_['min']:.{digits}f}-{spread_['max']:.{digits}f}]"


def render(results: Mapping[str, Any]) -> str:
    """The printed summary; its last line is `e2e_to_bare_ratio: <x>`."""
    m, summary = results["machine"], results["summary"]
    names = list(summary["variants"])
    width = 24
    header = f"{'':38}" + "".join(f"{name:>{width}}" for name in names)

    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:38}" + "".join(f"{cell:>{width}}" for cell in cells)

    def rows(label: str, key: str, digits: int = 1, by_size: bool = True) -> list[str]:
        keys = sorted({k for v in summary["variants"].values() for k in v[key]})
        first = {k: summary["variants"][names[0]][key].get(k) or {"median": 0.0} for k in keys}
        if by_size:
            keys.sort(key=lambda k: -first[k]["median"])
        return [label] + [
            row(f"  {k}", [_fmt(summary["variants"][n][key].get(k), digits) for n in names]) for k in keys
        ]

    lines = [
        f"Order saga benchmark {results['started_at'][:19]}Z to {results['finished_at'][11:19]}Z: "
        f"{m['nproc']} cores ({m['cpu']}), Python {m['python']}, PostgreSQL {m.get('postgresql')}, "
        f"{m['temporal_cli'].splitlines()[0] if m['temporal_cli'] else '?'}",
        f"load average {' '.join(f'{x:.2f}' for x in m['load_average_at_start'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in m['load_average_at_end'])} at the end",
        "variants: "
        + "; ".join(
            f"{n} {results['variants'][n] or '(defaults)'}, {results['workflow_runners'].get(n, '?')}"
            for n in names
        ),
        f"order: {' '.join(results['order'])}; figures are medians [min-max] over the repeats",
        "",
        header,
        row("bare floor, workflows/s", [_fmt(summary["variants"][n]["bare_per_second"]) for n in names]),
        row("e2e, orders/s", [_fmt(summary["variants"][n]["e2e_per_second"]) for n in names]),
        row("e2e / bare throughput", [_fmt(summary["variants"][n]["ratio"], 2) for n in names]),
        row(
            "CPU ms per order, all processes",
            [_fmt(summary["variants"][n]["cpu_ms_per_order_total"]) for n in names],
        ),
        "",
        *rows("CPU ms per order by process (e2e max):", "cpu_ms_per_order"),
        *rows("CPU ms per bare workflow:", "cpu_ms_per_bare_workflow"),
        *rows("work per order, all components (e2e max):", "work_total_per_order"),
        *rows("work per order by component:", "work_per_order", by_size=False),
        *rows("Temporal per order (from histories):", "temporal_per_order"),
        *rows("Temporal per bare workflow:", "temporal_per_bare_workflow"),
        "",
    ]
    for name in names:
        extras = results["extras"][name]
        half, starts, consume = extras["e2e"], extras["start_workflow"], extras["consume"]
        post, rpc, e2e = half["post_latency_ms"], starts["start_rpc_ms"], half["latency_ms"]
        lines += [
            f"[{name}] at half max ({extras['rate']:.1f}/s): POST /orders p50 {post['p50']:.1f} ms, p99 "
            f"{post['p99']:.1f} ms; StartWorkflow RPC p50 {rpc['p50']:.1f} ms, p99 {rpc['p99']:.1f} ms; "
            f"e2e p50 {e2e['p50']:.0f} ms, p99 {e2e['p99']:.0f} ms",
            *(f"[{name}] {line}" for line in summary_lines(consume)),
        ]
    drift = summary["floor_drift"]
    lines += [
        "",
        f"floor ({names[0]}): {drift['start']:.1f}/s at the start, {drift['end']:.1f}/s at the end "
        f"({drift['drift']:+.0%})"
        + (
            " -- DRIFT over 10%: the box's load changed during the run, compare with care"
            if drift["over_limit"]
            else ""
        ),
        "peak resident memory (MiB): "
        + ", ".join(f"{name} {mib:.0f}" for name, mib in m.get("peak_rss_mib", {}).items()),
        "",
        f"targets ({names[0]}):",
    ]
    for target in summary["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"  [{verdict}] {target['target']}: {target['measured']:.2f} vs {target['wanted']:.2f}")
    lines.append(f"e2e_to_bare_ratio: {summary['e2e_to_bare_ratio']:.3f}")
    return "\n".join(lines)


QUICK = {
    "warmup": 3,
    "repeats": 1,
    "bare_workflows": 20,
    "e2e_orders": 10,
    "steady_seconds": 3.0,
    "consume_messages": 30,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variant",
        action="append",
        type=Variant.parse,
        help="'NAME [KEY=VALUE ...]': settings for every launched process (repeat; the first is the "
        "reference of the last line). Default: one variant, the settings' defaults",
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant, alternated")
    parser.add_argument("--warmup", type=int, default=20, help="orders and bare workflows after each start")
    parser.add_argument("--bare-workflows", type=int, default=400, help="floor burst size")
    parser.add_argument("--e2e-orders", type=int, default=300, help="order burst size")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections of the order burst")
    parser.add_argument("--steady-seconds", type=float, default=20, help="length of the half-rate phases")
    parser.add_argument("--consume-messages", type=int, default=2000, help="events per reactor consume test")
    parser.add_argument("--raw-smtp-connections", type=int, help="default: the notification's pool size")
    parser.add_argument("--phase-timeout", type=float, default=600, help="give up on a phase after this (s)")
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="extra `temporal server start-dev` argument (repeat)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test, CI)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (results/)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    results = asyncio.run(run(args))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {path}\n", flush=True)
    print(render(results), flush=True)


if __name__ == "__main__":
    main()
