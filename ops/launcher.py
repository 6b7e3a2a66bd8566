"""The service's real processes, each its own OS process: the launcher of the fault harness and the benchmark.

Every component runs its usual entrypoint (`MODULES` below: `python -m entrypoints.worker`, ...)
configured only through its environment, like in production, against one database, on ports picked free
at start and under a broker namespace of its own (exchange `<ns>.events`, queues `<ns>.<reactor>...`,
deleted at stop).
The Temporal dev server runs with the Procfile's flags, headless, its SQLite file in the work directory.
Each component is an `ops.processes.Component`; databases and ports come from `ops.provisioning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from infra.settings import Settings, load_settings
from messaging.broker import close_quietly, connect
from messaging.topology import QueueState, Topology, delete_topology, queue_states
from ops.processes import Component
from ops.provisioning import executable, free_port
from orchestrator.client import connect_temporal
from reactors.registry import REACTORS

# The module each component runs as `python -m MODULE`: the one place to change when an entrypoint moves.
MODULES = {
    "smtp": "entrypoints.smtp_sink",
    "reactor": "entrypoints.reactors",
    "relay": "entrypoints.relay",
    "worker": "entrypoints.worker",
    "api": "entrypoints.api",
}


PROCFILE_SERVER_FLAGS = (
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
    "--search-attribute",
    "OrderStatus=Keyword",
    "--search-attribute",
    "CustomerId=Keyword",
    "--log-level",
    "warn",
)
# Lifts the per-namespace limit on concurrent long polls (benchmark callers waiting on many results).
NAMESPACE_COUNT_FLAG = ("--dynamic-config-value", "frontend.namespaceCount=10000")
# Dispatch workflow tasks at once instead of about every 35 ms (see the shared field notes).
FAST_DISPATCH_FLAG = ("--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000")

REACTOR_NAMES = tuple(reactor.name for reactor in REACTORS)
START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class StackOptions:
    workdir: Path
    database_url: str
    namespace: str = field(default_factory=lambda: "stack-" + uuid.uuid4().hex[:10])
    task_queue: str = field(default_factory=lambda: "orders-" + uuid.uuid4().hex[:8])
    log_level: str = "WARNING"
    # Settings for every component, as environment variables (e.g. SIMULATED_PAYMENT_LATENCY_MS).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    server_extra_flags: Sequence[str] = NAMESPACE_COUNT_FLAG
    # Per component kind ("worker", ...): `python -m` arguments replacing MODULES' entry (a test variant).
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Processes per kind ("worker", "relay", "reactor": each reactor): 1 unless set. The first keeps the
    # plain name ("worker", "reactor-loyalty"), the others get "#2", "#3"... (`replica_names`).
    replicas: Mapping[str, int] = field(default_factory=dict)


class LocalStack:
    """Dev server, SMTP sink, one process per reactor, relay, worker and API, started in that order."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.temporal_port = free_port()
        self.api_port = free_port()
        self.smtp_port = free_port()
        self.maildir = options.workdir / "mail"
        self.logs = options.workdir / "logs"
        self.components: dict[str, Component] = {}
        self._temporal: Client | None = None
        self.settings: Settings = load_settings(**self._settings_overrides())

    # --- configuration

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def topology(self) -> Topology:
        return Topology.from_settings(self.settings)

    @property
    def temporal(self) -> Client:
        assert self._temporal is not None, "start the stack first"
        return self._temporal

    def _settings_overrides(self) -> dict[str, object]:
        overrides: dict[str, object] = {
            "env": "test",
            "database_url": self.options.database_url,
            "temporal_address": self.temporal_address,
            "temporal_task_queue": self.options.task_queue,
            "broker_namespace": self.options.namespace,
            "smtp_host": "127.0.0.1",
            "smtp_port": self.smtp_port,
            "api_host": "127.0.0.1",
            "api_port": self.api_port,
        }
        # The harness's own view must match what the components read from the same variables.
        for key, value in self.options.extra_env.items():
            overrides[key.lower()] = _decode_env(value)
        return overrides

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ENV": "test",
                "LOG_LEVEL": self.options.log_level,
                "DATABASE_URL": self.options.database_url,
                "TEMPORAL_ADDRESS": self.temporal_address,
                "TEMPORAL_NAMESPACE": "default",
                "TEMPORAL_TASK_QUEUE": self.options.task_queue,
                "RABBITMQ_URL": self.settings.rabbitmq_url,
                "BROKER_NAMESPACE": self.options.namespace,
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.smtp_port),
                "SMTP_SINK_MAILDIR": str(self.maildir),
                "API_HOST": "127.0.0.1",
                "API_PORT": str(self.api_port),
                "PYTHONUNBUFFERED": "1",
                # Fixed metrics ports would collide between the reactor processes and with other stacks.
                "WORKER_METRICS_PORT": "0",
                "RELAY_METRICS_PORT": "0",
                "REACTORS_METRICS_PORT": "0",
                "TEMPORAL_METRICS_ADDRESS": "",
            }
        )
        env.update(self.options.extra_env)
        return env

    def _component(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Component:
        component = Component(name, argv, {**self.environment(), **(env or {})}, self.logs / f"{name}.log")
        self.components[name] = component
        return component

    def python_component(
        self, name: str, *module_and_args: str, env: Mapping[str, str] | None = None
    ) -> Component:
        """A component running `python -m <module> <args>` with the stack's environment (plus `env`)."""
        return self._component(name, [sys.executable, "-m", *module_and_args], env)

    def service_component(self, name: str, kind: str, *args: str) -> Component:
        """A component of a kind in MODULES (or the options' replacement command), plus `args`."""
        command = self.options.commands.get(kind) or (MODULES[kind],)
        return self.python_component(name, *command, *args)

    # --- lifecycle

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        server = self._component(
            "temporal",
            [
                executable("temporal"),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.temporal_port),
                "--headless",
                "--db-filename",
                str(self.options.workdir / "temporal.db"),
                *PROCFILE_SERVER_FLAGS,
                *self.options.server_extra_flags,
            ],
        )
        await server.start()
        self._temporal = await asyncio.wait_for(
            connect_temporal(self.settings, wait_seconds=START_TIMEOUT_SECONDS), START_TIMEOUT_SECONDS + 5
        )
        await self.service_component("smtp", "smtp").start()
        await self.wait_for_port(self.smtp_port, "smtp")
        for name in REACTOR_NAMES:
            for replica in self.replica_names(f"reactor-{name}", "reactor"):
                await self.service_component(replica, "reactor", name).start()
        await self.wait_for_reactors()
        for kind in ("relay", "worker"):
            for replica in self.replica_names(kind, kind):
                await self.service_component(replica, kind).start()
        await self.service_component("api", "api").start()
        await self._wait_for_api()
        await self.wait_for_worker()

    async def stop(self) -> None:
        """Stop every component (reverse order), then delete the namespace's exchange and queues."""
        for component in reversed(list(self.components.values())):
            with contextlib.suppress(ProcessLookupError):
                await component.stop()
        with contextlib.suppress(Exception):
            connection = await connect(self.settings, "stack-cleanup")
            try:
                channel = await connection.channel()
                await delete_topology(channel, self.topology, REACTOR_NAMES, 10)
            finally:
                await close_quietly(connection, 10)

    def replica_names(self, name: str, kind: str) -> list[str]:
        """The component names of every replica of `name` (a kind in `StackOptions.replicas`)."""
        count = max(1, self.options.replicas.get(kind, 1))
        return [name, *(f"{name}#{n}" for n in range(2, count + 1))]

    async def kill(self, name: str) -> None:
        await self.components[name].kill()

    async def start_component(self, name: str) -> None:
        await self.components[name].start()

    def crashed(self) -> dict[str, list[int]]:
        """Components that exited at least once without being killed or stopped by us (even if restarted
        since), with the exit codes."""
        for component in self.components.values():
            component.note_exit()
        return {name: list(c.crashes) for name, c in self.components.items() if c.crashes}

    # --- readiness

    async def wait_for_port(self, port: int, name: str) -> None:
        """Until something accepts TCP connections on the port (the component `name` must be running)."""
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            while True:
                self._check_alive(name)
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    async def _wait_for_api(self) -> None:
        await self.wait_for_http("api", self.api_url)

    async def wait_for_http(self, name: str, url: str) -> None:
        """Until the component's /healthz answers 200."""
        async with (
            httpx.AsyncClient(base_url=url, timeout=2) as http,
            asyncio.timeout(START_TIMEOUT_SECONDS),
        ):
            while True:
                self._check_alive(name)
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)

    async def wait_for_reactors(self, within: float = START_TIMEOUT_SECONDS) -> None:
        """Until every reactor's main queue has a consumer per running replica (they declare their queues
        themselves)."""
        async with asyncio.timeout(within):
            while True:
                wanted = {}
                for name in REACTOR_NAMES:
                    self._check_alive(f"reactor-{name}")
                    replicas = self.replica_names(f"reactor-{name}", "reactor")
                    wanted[self.topology.queue(name)] = sum(self.components[r].running for r in replicas)
                states = await self.queue_states(list(wanted))
                if all(states[queue][1] >= count for queue, count in wanted.items()):
                    return
                await asyncio.sleep(0.2)

    async def wait_for_worker(self, within: float = START_TIMEOUT_SECONDS) -> None:
        """Until the task queue has a workflow poller."""
        request = DescribeTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name=self.options.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        async with asyncio.timeout(within):
            while True:
                self._check_alive("worker")
                response = await self.temporal.workflow_service.describe_task_queue(request)
                if response.pollers:
                    return
                await asyncio.sleep(0.2)

    def _check_alive(self, name: str) -> None:
        component = self.components[name]
        if not component.running:
            raise RuntimeError(f"{name} exited during start-up:\n{component.log_tail()}")

    # --- broker introspection

    async def queue_states(self, queues: Sequence[str]) -> dict[str, QueueState]:
        """(ready messages, consumers) of each queue; a queue that does not exist yet counts as (0, 0).

        Raises whatever else fails (broker unreachable, a timeout): a failed probe is not an empty queue."""
        return await queue_states(self.settings, queues, "stack-probe")


def _decode_env(value: str) -> object:
    """What pydantic-settings would parse from the variable: JSON for lists, the text otherwise."""
    if value.startswith("["):
        decoded: object = json.loads(value)
        return decoded
    return value
