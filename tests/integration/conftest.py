"""Fixtures for the event tests: the REAL RabbitMQ and databases, isolated per test by a name prefix.

Each test gets its own broker namespace (exchange `<ns>.events`, queues `<ns>.<reactor>...`), deleted
afterwards, so tests do not see each other's messages nor those of other test runs on the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import EventType
from infra.db import Database
from infra.settings import Settings
from messaging.broker import close_quietly, connect
from messaging.relay import AfterConfirm, OutboxRelay
from messaging.topology import Subscription, Topology, declare_subscription, delete_topology
from reactors.base import Reactor
from reactors.models import DeliveryRecord
from reactors.notification.smtp_sink import SmtpSink
from reactors.registry import REACTORS
from reactors.runtime import Fault, ReactorRuntime

WAIT_SECONDS = 20.0


def event_settings(base: Settings, smtp_port: int) -> Settings:
    """The test database's settings plus a private broker namespace and fast retries."""
    return base.model_copy(
        update={
            "broker_namespace": "t-" + uuid.uuid4().hex[:12],
            "broker_call_timeout_seconds": 5.0,
            "broker_reconnect_max_seconds": 0.5,
            "reactor_retry_delays_ms": [100, 200],
            "reactor_max_attempts": 3,
            "reactor_delivery_limit": 5,
            "reactor_shutdown_timeout_seconds": 3.0,
            "smtp_port": smtp_port,
            "notification_send_lease_seconds": 2.0,
        }
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = WAIT_SECONDS, what: str = ""
) -> None:
    """Poll `check` until it is true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not reached within {within}s: {what or check}")
        await asyncio.sleep(0.05)


@dataclass
class Running:
    task: asyncio.Task[None]
    stop: asyncio.Event
    component: Any
    # A test that kills this component on purpose sets this; any other failure of it fails the test.
    may_fail: bool = False


@dataclass
class EventStack:
    """Starts relays and reactor runtimes in-process against one test database and namespace."""

    settings: Settings
    database: Database
    sink: SmtpSink
    topology: Topology
    running: list[Running] = field(default_factory=list)
    extra_reactors: list[str] = field(default_factory=list)

    def start_relay(
        self, reactors: Sequence[Reactor] = REACTORS, *, after_confirm: AfterConfirm | None = None
    ) -> Running:
        subscriptions = [reactor.subscription for reactor in reactors]
        relay = OutboxRelay(
            self.settings, self.database.sessions, self.topology, subscriptions, after_confirm=after_confirm
        )
        return self._start(relay.run, relay)

    async def start_reactor(
        self, reactor: Reactor, *, fault: Fault | None = None, event_types: dict[str, EventType] | None = None
    ) -> Running:
        if reactor.name not in {r.name for r in REACTORS}:
            self.extra_reactors.append(reactor.name)
        runtime = ReactorRuntime(
            reactor,
            self.settings,
            self.database.sessions,
            self.topology,
            fault=fault,
            event_types=event_types,
        )
        running = self._start(runtime.run, runtime)
        await asyncio.wait_for(runtime.ready.wait(), 15)
        return running

    async def start_reactors(self, reactors: Sequence[Reactor] = REACTORS) -> list[Running]:
        return [await self.start_reactor(reactor) for reactor in reactors]

    async def declare(self, subscriptions: Sequence[Subscription]) -> None:
        """Declare queues (for example a probe queue that records what the exchange routes)."""
        connection = await connect(self.settings, "test-declare")
        try:
            channel = await connection.channel()
            for subscription in subscriptions:
                await declare_subscription(channel, self.topology, subscription, 5)
                self.extra_reactors.append(subscription.reactor)
        finally:
            await close_quietly(connection, 5)

    def _start(self, run: Callable[[asyncio.Event], Awaitable[None]], component: Any) -> Running:
        stop = asyncio.Event()
        running = Running(asyncio.ensure_future(run(stop)), stop, component)
        self.running.append(running)
        return running

    async def close(self) -> None:
        """Stop every relay and reactor, delete the topology; then fail the test if one of them had crashed
        or did not stop (unless the test killed it on purpose: `may_fail`)."""
        for running in reversed(self.running):
            running.stop.set()
        crashes: list[str] = []
        for running in self.running:
            name = type(running.component).__name__
            if running.task.cancelled():
                continue
            try:
                await asyncio.wait_for(asyncio.shield(running.task), 15)
            except TimeoutError:
                running.task.cancel()
                crashes.append(f"{name} did not stop within 15 s")
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # a test's stand-in for a killed process is a BaseException
                if not running.may_fail:
                    crashes.append(f"{name} crashed: {err!r}")
        with contextlib.suppress(Exception):  # cleanup of a private namespace; its failure hides nothing
            connection = await connect(self.settings, "test-cleanup")
            try:
                channel = await connection.channel()
                names = [r.name for r in REACTORS] + self.extra_reactors
                await delete_topology(channel, self.topology, sorted(set(names)), 5)
            finally:
                await close_quietly(connection, 5)
        if crashes:
            pytest.fail("; ".join(crashes))

    async def ledger(self, consumer: str, outcome: str | None = None) -> list[DeliveryRecord]:
        async with self.database.sessions() as session:
            query = select(DeliveryRecord).where(DeliveryRecord.consumer == consumer)
            if outcome is not None:
                query = query.where(DeliveryRecord.outcome == outcome)
            return list((await session.scalars(query.order_by(DeliveryRecord.id))).all())

    async def count(self, model: type[Any], *conditions: Any) -> int:
        async with self.database.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)

    async def read(self, query: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with self.database.sessions() as session:
            return await query(session)


@contextlib.asynccontextmanager
async def event_stack(settings: Settings, database: Database, sink: SmtpSink) -> AsyncIterator[EventStack]:
    test_settings = event_settings(settings, sink.port)
    stack = EventStack(test_settings, database, sink, Topology.from_settings(test_settings))
    try:
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def events(database: tuple[Settings, Database], smtp_sink: SmtpSink) -> AsyncIterator[EventStack]:
    settings, db = database
    async with event_stack(settings, db, smtp_sink) as stack:
        yield stack
