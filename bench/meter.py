"""What one benchmark phase cost: CPU per process (from /proc), the processes' work counters, PostgreSQL and
RabbitMQ on their own, and Temporal round trips and billable actions read from workflow histories.

- CPU: user + system time of each stack process (`/proc/<pid>/stat`), of the bench client, of PostgreSQL and
  of RabbitMQ. PostgreSQL is counted twice: `postgresql (bench db)`, the backends connected to this run's
  database (sampled every `SAMPLE_SECONDS` from pg_stat_activity, so a backend that exits loses at most its
  last interval; the bench's own reads are excluded by their application_name), and `postgresql (server)`,
  the postmaster with its living and exited children, which includes the other users of the shared server.
  RabbitMQ is the shared node (`beam.smp`), other users included; both shared servers also get a `..., net`
  figure, less their load measured while the stack idled just before (`measure_background`).
- Work counters: the `observability.counters` files of each process (WORK_COUNTERS_DIR), by component.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from observability.counters import DUMP_INTERVAL_SECONDS
from ops.launcher import LocalStack

BENCH_APPLICATION_NAME = "bench-client"
SAMPLE_SECONDS = 0.5
BACKGROUND_SECONDS = 3.0
POSTGRES_DB, POSTGRES_SERVER, RABBITMQ = "postgresql (bench db)", "postgresql (server)", "rabbitmq (node)"
CLIENT = "bench client"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float | None:
    """User + system CPU seconds of a process from /proc/<pid>/stat (plus its exited, reaped children's
    with `children`); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICKS


def _pids_named(name: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]


class Meter:
    """Snapshots of CPU seconds and work counts of every part of the stack; `cost` compares two."""

    def __init__(self, stack: LocalStack, database: AsyncEngine, counters_dir: Path | None) -> None:
        self._stack = stack
        self._engine = database
        self._counters_dir = counters_dir
        self._backends: dict[int, float] = {}  # cumulative CPU seconds last seen per backend of our database
        self._sampler: asyncio.Task[None] | None = None
        postgres = _pids_named("postgres")
        postmasters = [p for p in postgres if p.ppid() not in {q.pid for q in postgres}]
        self._postmaster = postmasters[0].pid if postmasters else None
        self._rabbitmq = [p.pid for p in _pids_named("beam.smp")]
        self._background: dict[str, float] = {}
        self._names_by_pid: dict[int, str] = {}

    async def __aenter__(self) -> Meter:
        await self._sample_backends()
        self._sampler = asyncio.create_task(self._sample_forever())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    async def measure_background(self, seconds: float = BACKGROUND_SECONDS) -> dict[str, float]:
        """CPU seconds per second of the shared servers while the stack idles: the other users' load, taken
        off their figures (`... net`) in the costs of the snapshots that follow."""
        shared = (POSTGRES_SERVER, RABBITMQ)
        before, at = (
            {POSTGRES_SERVER: self._postgres_server(), RABBITMQ: self._rabbitmq_cpu()},
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        after = {POSTGRES_SERVER: self._postgres_server(), RABBITMQ: self._rabbitmq_cpu()}
        elapsed = time.monotonic() - at
        self._background = {name: (after[name] - before[name]) / elapsed for name in shared}
        return self._background

    def _rabbitmq_cpu(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self._rabbitmq)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            with contextlib.suppress(Exception):  # a missed sample only widens the error bar
                await self._sample_backends()

    async def _sample_backends(self) -> None:
        async with self._engine.connect() as connection:
            pids = (
                await connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name <> :bench"
                    ),
                    {"bench": BENCH_APPLICATION_NAME},
                )
            ).scalars()
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    self._backends[pid] = max(seconds, self._backends.get(pid, 0.0))

    def _postgres_server(self) -> float:
        if self._postmaster is None:
            return 0.0
        total = cpu_seconds(self._postmaster, children=True) or 0.0
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._postmaster).children():
                total += cpu_seconds(child.pid) or 0.0
        return total

    def _work_counts(self) -> dict[str, Counter[str]]:
        """Work counters by component name (the stack's, matched by pid; summed over restarts)."""
        # Every pid a component ever had: a restarted component's earlier processes stay its own.
        by_pid = self._names_by_pid
        by_pid.update(
            {component.pid: name for name, component in self._stack.components.items() if component.process}
        )
        counts: dict[str, Counter[str]] = {}
        if self._counters_dir is None or not self._counters_dir.exists():
            return counts
        for path in self._counters_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                dumped = json.loads(path.read_text())
                name = by_pid.get(int(dumped["pid"]), f"{dumped['component']} (pid {dumped['pid']})")
                counts.setdefault(name, Counter()).update(dumped["counts"])
        return counts

    async def snapshot(self) -> dict[str, Any]:
        """CPU seconds and work counts now. Call at a quiet moment, once the counters files caught up."""
        await self._sample_backends()
        await asyncio.sleep(2.5 * DUMP_INTERVAL_SECONDS)  # every process's counters dumped twice since
        cpu: dict[str, float] = {}
        for name, component in self._stack.components.items():
            if component.running and (seconds := cpu_seconds(component.pid, children=True)) is not None:
                cpu[name] = seconds
        cpu[CLIENT] = cpu_seconds(os.getpid()) or 0.0
        cpu[POSTGRES_DB] = sum(self._backends.values())
        cpu[POSTGRES_SERVER] = self._postgres_server()
        cpu[RABBITMQ] = self._rabbitmq_cpu()
        machine = psutil.cpu_times()
        return {
            "at": time.monotonic(),
            "cpu": cpu,
            "background": dict(self._background),
            "machine_busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "work": {name: dict(counts) for name, counts in self._work_counts().items()},
        }

    @staticmethod
    def cost(before: Mapping[str, Any], after: Mapping[str, Any], units: int) -> dict[str, Any]:
        """Per unit (order, workflow, mail) between two snapshots: CPU ms by process, work counts by
        component; and the share of the machine's CPU that was busy (0..1, all cores)."""
        elapsed = after["at"] - before["at"]
        cpu = {
            name: (seconds - before["cpu"].get(name, 0.0)) * 1000 / units
            for name, seconds in after["cpu"].items()
        }
        for name, rate in before["background"].items():
            cpu[f"{name}, net"] = max(0.0, cpu[name] - rate * elapsed * 1000 / units)
        work: dict[str, dict[str, float]] = {}
        totals: Counter[str] = Counter()
        for name, counts in after["work"].items():
            earlier = before["work"].get(name, {})
            delta = {key: (value - earlier.get(key, 0)) / units for key, value in counts.items()}
            if any(delta.values()):
                work[name] = delta
                totals.update(delta)
        # The stack's own: its processes, its database's backends, RabbitMQ net of the idle load.
        shared = {POSTGRES_SERVER, RABBITMQ, f"{POSTGRES_SERVER}, net"}
        wall = elapsed * (os.cpu_count() or 1)
        return {
            "cpu_ms": cpu,
            "cpu_ms_total": sum(v for k, v in cpu.items() if k not in shared),
            "work": work,
            "work_total": dict(totals),
            "machine_busy": (after["machine_busy"] - before["machine_busy"]) / wall if wall else 0.0,
        }


# --- Temporal: round trips and billable actions, from histories

LOCAL_ACTIVITY_MARKER = "core_local_activity"


async def history_costs(client: Client, workflow_ids: Iterable[str]) -> dict[str, float]:
    """Mean per workflow over the given ones: history events, workflow and activity tasks, local
    activities, upserts, Temporal round trips and billable actions.

    Round trips (client and worker to server): the start, then a poll and a completion per workflow task
    and per activity task (retries included), one per signal or update. Billable actions, as Temporal Cloud
    counts them from a history: the start, each activity attempt, the local activities of one workflow
    task together, each search-attribute or memo upsert, signal, accepted update, timer and child start;
    version markers (`workflow.patched`) are free.
    """
    totals: Counter[str] = Counter()
    count = 0
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        count += 1
        kinds = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events)
        attempts = sum(
            max(1, e.activity_task_started_event_attributes.attempt)
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        )
        local_tasks = {
            e.marker_recorded_event_attributes.workflow_task_completed_event_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        }
        local_activities = sum(
            1
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        )
        messages = kinds["WORKFLOW_EXECUTION_SIGNALED"] + kinds["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]
        totals.update(
            {
                "history_events": len(history.events),
                "workflow_tasks": kinds["WORKFLOW_TASK_COMPLETED"],
                "activity_tasks": attempts,
                "local_activities": local_activities,
                "upserts": kinds["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"],
                "round_trips": 1 + 2 * (kinds["WORKFLOW_TASK_STARTED"] + attempts) + messages,
                "billable_actions": 1
                + attempts
                + len(local_tasks)
                + kinds["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"]
                + kinds["WORKFLOW_PROPERTIES_MODIFIED"]
                + messages
                + kinds["TIMER_STARTED"]
                + kinds["START_CHILD_WORKFLOW_EXECUTION_INITIATED"],
            }
        )
    return {key: value / count for key, value in totals.items()} if count else {}
