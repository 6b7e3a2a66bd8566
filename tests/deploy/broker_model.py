"""The RabbitMQ permission model: what each component needs, derived by running the topology code against a
recording channel, and the broker definitions template (helpers of the tests/deploy checks)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from messaging.topology import Topology, declare_subscription, declare_topology
from reactors.registry import REACTORS
from tests.deploy.stack_files import (
    API_USER,
    DEFAULT_EXCHANGE,
    DEFINITIONS,
    RELAY_USER,
    reactor_services,
    settings_of,
)

# --- the broker permission model --------------------------------------------------------------------------


@dataclass
class Needs:
    """Resources a user must be granted each permission on (RabbitMQ's access-control rules)."""

    configure: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)

    def of(self, permission: str) -> set[str]:
        granted: set[str] = getattr(self, permission)
        return granted


PERMISSIONS = ("configure", "write", "read")


class RecordingQueue:
    def __init__(self, name: str, needs: Needs) -> None:
        self.name = name
        self._needs = needs

    async def bind(self, exchange: Any, routing_key: str | None = None, **_: Any) -> None:
        # queue.bind: write on the queue, read on the exchange.
        self._needs.write.add(self.name)
        self._needs.read.add(exchange if isinstance(exchange, str) else exchange.name)


class RecordingChannel:
    """Stands in for an aio-pika channel: records what the topology code declares, as permission needs."""

    def __init__(self) -> None:
        self.needs = Needs()

    async def declare_exchange(self, name: str, *_: Any, **__: Any) -> None:
        self.needs.configure.add(name)  # exchange.declare: configure on the exchange

    async def declare_queue(
        self, name: str, *_: Any, arguments: Mapping[str, Any] | None = None, **__: Any
    ) -> RecordingQueue:
        self.needs.configure.add(name)  # queue.declare: configure on the queue
        if arguments and "x-dead-letter-exchange" in arguments:
            # ... with a dead-letter exchange: also read on the queue and write on that exchange.
            self.needs.read.add(name)
            self.needs.write.add(arguments["x-dead-letter-exchange"] or DEFAULT_EXCHANGE)
        return RecordingQueue(name, self.needs)


def declared_needs(declare: Any) -> Needs:
    """Runs `declare(channel)` without an event loop (no asyncio.run beside pytest-asyncio's loop): the
    recording channel answers at once, so the coroutine never suspends."""
    channel = RecordingChannel()
    coroutine = declare(channel)
    try:
        coroutine.send(None)
    except StopIteration:
        return channel.needs
    coroutine.close()
    raise AssertionError("the topology code awaited something other than the channel")


def relay_needs(topology: Topology) -> Needs:
    """The relay declares every registered reactor's queues (entrypoints.bootstrap.outbox_relay), then
    publishes each event to the events exchange (messaging.relay.OutboxRelay)."""
    subscriptions = [reactor.subscription for reactor in REACTORS]
    needs = declared_needs(lambda channel: declare_topology(channel, topology, subscriptions, 1.0))
    needs.write.add(topology.exchange)
    return needs


def reactor_needs(topology: Topology, reactor_name: str) -> Needs:
    """A reactor declares its own subscription, consumes its queue, and hands retries and dead letters over
    through the default exchange (reactors.runtime)."""
    reactor = next(r for r in REACTORS if r.name == reactor_name)
    needs = declared_needs(lambda channel: declare_subscription(channel, topology, reactor.subscription, 1.0))
    needs.read.add(topology.queue(reactor_name))
    needs.write.add(DEFAULT_EXCHANGE)
    return needs


def api_needs(topology: Topology) -> Needs:
    """The API reads each reactor's DLQ (basic.get, no declare) and sends dead letters and replayed events
    to a reactor's queue through the default exchange (reactors.dlq, reactors.replay); nothing else."""
    needs = Needs()
    needs.read |= {topology.dead_letter_queue(reactor.name) for reactor in REACTORS}
    needs.write.add(DEFAULT_EXCHANGE)
    return needs


def name_universe(topology: Topology) -> set[str]:
    """Every name the code can touch, plus near misses a loose regex would let through."""
    names = {topology.exchange, DEFAULT_EXCHANGE, "amq.topic", f"{topology.namespace}.events.extra"}
    names |= {f"x{topology.exchange}", f"{topology.namespace}x.events", f"{topology.namespace}.unknown"}
    for reactor in REACTORS:
        for queue in topology.queues_of(reactor.name):
            names |= {queue, queue + ".extra", queue + "x"}
    return names


@functools.cache
def definitions_template() -> dict[str, Any]:
    document = json.loads(DEFINITIONS.read_text())
    assert isinstance(document, dict)
    return document


def rendered_definitions(env: Mapping[str, str]) -> dict[str, Any]:
    """The template with its ${NAME} placeholders filled in, as render-definitions.sh does."""
    text = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: env[m[1]], DEFINITIONS.read_text())
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


def permissions_by_user(document: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {entry["user"]: entry for entry in document["permissions"] if entry["vhost"] == "/"}


def component_topology(monkeypatch: pytest.MonkeyPatch) -> Topology:
    return Topology.from_settings(settings_of("relay", monkeypatch))


def broker_user_of_services() -> dict[str, str]:
    """Service -> the broker user it must use."""
    expected = {"api": API_USER, "relay": RELAY_USER}
    expected.update({service: reactor for service, reactor in reactor_services().items()})
    return expected
