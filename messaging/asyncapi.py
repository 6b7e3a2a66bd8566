"""The event catalog: an AsyncAPI 3.0 document generated from the contracts and the topology, and the
check that the event topology has no cycle.

Everything here is derived, never written by hand: the messages and their schemas come from `contracts/`
(the same pydantic models the producers and consumers use), the channels and operations from
`messaging/topology.py` (exchange, queues, bindings) and the registered reactors (who consumes, and publishes,
what). `order-saga asyncapi` writes it; the API serves it at GET /asyncapi.json.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pydantic.json_schema import models_json_schema

from contracts.envelope import ORDER_EVENTS_SOURCE, STRUCTURED_CONTENT_TYPE, CloudEvent, EventType
from contracts.orders import EVENT_TYPES
from infra.settings import Settings
from messaging import headers
from messaging.topology import Topology

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
# The orchestrated saga: it publishes the order events (through the outbox and relay) and consumes none.
SAGA = "order-saga"
SERVER = "rabbitmq"
SCHEMA_REF = "#/components/schemas/{model}"


class Consumer(Protocol):
    """What the catalog needs of a reactor (`reactors.base.Reactor` is one): its name, the routing-key
    patterns it consumes and the event types it publishes."""

    @property
    def name(self) -> str: ...

    @property
    def routing_keys(self) -> tuple[str, ...]: ...

    @property
    def publishes(self) -> tuple[str, ...]: ...


# --- the event flow graph and its cycle check ------------------------------------------------------------


@dataclass(frozen=True)
class EventFlow:
    """One participant of the choreography: the routing-key patterns it consumes, the event types it
    publishes."""

    name: str
    consumes: tuple[str, ...]
    publishes: tuple[str, ...]


class EventCycleError(ValueError):
    """Some participant's events come back to it, directly or through others: an endless loop."""

    def __init__(self, cycle: Sequence[tuple[str, str]]) -> None:
        self.cycle = list(cycle)
        path = " -> ".join(f"{name} ({event})" for name, event in cycle)
        super().__init__(f"the event topology has a cycle: {path} -> {cycle[0][0]}")


def event_flows(reactors: Iterable[Consumer], saga_events: Iterable[str] = EVENT_TYPES) -> list[EventFlow]:
    """The saga and every reactor, as publishers and consumers."""
    return [
        EventFlow(SAGA, (), tuple(saga_events)),
        *(EventFlow(reactor.name, reactor.routing_keys, reactor.publishes) for reactor in reactors),
    ]


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on dots, `*` is exactly one word, `#` zero or more."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


def feeds(flows: Sequence[EventFlow]) -> dict[str, dict[str, str]]:
    """Edges of the graph: `feeds(...)[a][b]` is an event type `a` publishes that `b` consumes."""
    edges: dict[str, dict[str, str]] = {flow.name: {} for flow in flows}
    for producer in flows:
        for event in producer.publishes:
            for consumer in flows:
                if any(topic_matches(pattern, event) for pattern in consumer.consumes):
                    edges[producer.name].setdefault(consumer.name, event)
    return edges


def find_cycle(flows: Sequence[EventFlow]) -> list[tuple[str, str]] | None:
    """A cycle as [(participant, event it publishes to the next)...], or None. Depth-first, deterministic."""
    edges = feeds(flows)
    state: dict[str, str] = {}  # absent: unvisited; "open": on the current path; "done": no cycle below
    path: list[tuple[str, str]] = []

    def visit(node: str) -> list[tuple[str, str]] | None:
        state[node] = "open"
        for successor, event in edges[node].items():
            path.append((node, event))
            if state.get(successor) == "open":
                start = next(i for i, (name, _) in enumerate(path) if name == successor)
                return path[start:]
            if successor not in state and (found := visit(successor)) is not None:
                return found
            path.pop()
        state[node] = "done"
        return None

    for flow in flows:
        if flow.name not in state and (cycle := visit(flow.name)) is not None:
            return cycle
    return None


def check_acyclic(reactors: Iterable[Consumer], saga_events: Iterable[str] = EVENT_TYPES) -> None:
    """Raise EventCycleError if a reactor's publications can come back to it (directly or not)."""
    cycle = find_cycle(event_flows(reactors, saga_events))
    if cycle is not None:
        raise EventCycleError(cycle)


# --- the AsyncAPI 3.0 document ---------------------------------------------------------------------------


def asyncapi_document(
    settings: Settings,
    reactors: Sequence[Consumer],
    event_types: Mapping[str, EventType] = EVENT_TYPES,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the order events on the broker the settings name, consumed by
    `reactors` (the registry's, `reactors.registry.REACTORS`, in the service)."""
    check_acyclic(reactors, event_types)
    topology = Topology.from_settings(settings)
    vhost = _vhost(settings.rabbitmq_url)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    for event_type in event_types.values():
        key = _identifier(event_type.type)
        messages[key] = _message(event_type)
        channels[key] = {
            "address": event_type.routing_key,
            "title": event_type.type,
            "summary": f"{event_type.type} events on the topic exchange {topology.exchange}.",
            "servers": [{"$ref": f"#/servers/{SERVER}"}],
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": topology.exchange,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        operations[f"{SAGA}.send.{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
            "summary": f"The saga writes {event_type.type} to its outbox in the transaction of its final "
            "step; the relay publishes it (persistent, confirmed, mandatory), at least once.",
            "x-producer": SAGA,
        }

    for reactor in reactors:
        consumed = [
            event_type
            for event_type in event_types.values()
            if any(topic_matches(pattern, event_type.routing_key) for pattern in reactor.routing_keys)
        ]
        for suffix, queue, summary in (
            ("queue", topology.queue(reactor.name), "its quorum queue, bound to "),
            ("dlq", topology.dead_letter_queue(reactor.name), "its dead-letter queue, fed from "),
        ):
            channel_key = f"{reactor.name}.{suffix}"
            channels[channel_key] = {
                "address": queue,
                "title": queue,
                "summary": f"Reactor {reactor.name}: {summary}{', '.join(reactor.routing_keys)}.",
                "servers": [{"$ref": f"#/servers/{SERVER}"}],
                "messages": {
                    _identifier(t.type): {"$ref": f"#/components/messages/{_identifier(t.type)}"}
                    for t in consumed
                },
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": {
                            "name": queue,
                            "durable": True,
                            "exclusive": False,
                            "autoDelete": False,
                            "vhost": vhost,
                        },
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
                "x-routing-keys": list(reactor.routing_keys),
            }
        operations[f"{reactor.name}.receive"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{reactor.name}.queue"},
            "messages": [
                {"$ref": f"#/channels/{reactor.name}.queue/messages/{_identifier(t.type)}"} for t in consumed
            ],
            "summary": f"Reactor {reactor.name} applies each event once in effect (inbox), retries transient "
            f"failures through wait queues and dead-letters the rest after {settings.reactor_max_attempts} "
            "attempts.",
            "x-consumer": reactor.name,
        }
        for published in reactor.publishes:
            if published in event_types:
                key = _identifier(published)
                operations[f"{reactor.name}.send.{key}"] = {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{key}"},
                    "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
                    "x-producer": reactor.name,
                }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Order saga events",
            "version": "1.0.0",
            "description": "What the order saga publishes once an order is shipped or cancelled, and which "
            "reactors consume it. Messages are structured-mode CloudEvents 1.0 (the whole envelope is the "
            "body); the type carries the version and is the routing key. Producers are strict, consumers "
            "ignore unknown fields; a breaking change is a new version published alongside.",
        },
        "defaultContentType": STRUCTURED_CONTENT_TYPE,
        "servers": {
            SERVER: {
                "host": _host(settings.rabbitmq_url),
                "pathname": vhost,
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "RabbitMQ: one topic exchange for every event; per reactor a quorum queue, "
                "wait queues for delayed retries and a dead-letter queue.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas(event_types.values())},
    }


def _message(event_type: EventType) -> dict[str, Any]:
    return {
        "name": event_type.type,
        "title": event_type.type,
        "summary": (event_type.payload.__doc__ or event_type.type).strip().splitlines()[0],
        "contentType": STRUCTURED_CONTENT_TYPE,
        "correlationId": {"location": "$message.payload#/subject", "description": "The order id."},
        "headers": {
            "type": "object",
            "properties": {
                "traceparent": {
                    "type": "string",
                    "description": "W3C trace context of the order's placement (when tracing is on).",
                },
                "tracestate": {"type": "string"},
                headers.ATTEMPT: {"type": "integer", "description": "Set on redeliveries from a wait queue."},
            },
        },
        "payload": {"$ref": SCHEMA_REF.format(model=_event_schema_name(event_type))},
        "bindings": {"amqp": {"messageType": event_type.type, "bindingVersion": AMQP_BINDING_VERSION}},
        "x-source": ORDER_EVENTS_SOURCE,
    }


def _schemas(event_types: Iterable[EventType]) -> dict[str, Any]:
    """The payload models and every model they use, then one envelope schema per event type."""
    types = list(event_types)
    _, definitions = models_json_schema(
        [(event_type.payload, "validation") for event_type in types], ref_template=SCHEMA_REF
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    envelope = CloudEvent.model_json_schema(ref_template=SCHEMA_REF)
    for event_type in types:
        schema = copy.deepcopy(envelope)
        schema["title"] = event_type.type
        schema["properties"]["type"] = {"const": event_type.type, "title": "Type", "type": "string"}
        schema["properties"]["data"] = {"$ref": SCHEMA_REF.format(model=event_type.payload.__name__)}
        schemas[_event_schema_name(event_type)] = schema
    return schemas


def _event_schema_name(event_type: EventType) -> str:
    return f"{event_type.payload.__name__}Event"


def _identifier(event_type: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", event_type)


def _host(url: str) -> str:
    """Host and port only: the broker URL's credentials stay out of a public document."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672}"


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"
