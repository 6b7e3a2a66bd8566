"""The CloudEvents 1.0 envelope (structured JSON mode) and the rules for reading and writing it.

Producers are strict: an unknown field is a bug in the producer and fails at once (`extra="forbid"` on every
model). Consumers are tolerant: `parse_event` validates with `extra="ignore"`, so a v1 consumer keeps working
when a producer adds an optional field to a v1 payload. A breaking change needs a new version (v2), which
gets its own type and routing key.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
# The AMQP content type of a structured-mode CloudEvent (the whole envelope is the body).
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
# Where the order service's events come from (CloudEvents `source`, a URI reference).
ORDER_EVENTS_SOURCE = "/order-saga/orders"
# Fixed namespace of the deterministic event ids (uuid5); changing it would re-issue every event id.
EVENT_ID_NAMESPACE = uuid.UUID("6f1b8a3e-5c0d-4f7e-9a41-2d3c8e9b7a10")


class Payload(BaseModel):
    """Base of every event payload: strict when built, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope. `subject` is the order id; `type` has the version, order.shipped.v1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = SPEC_VERSION
    id: Annotated[str, Field(min_length=1, max_length=64)]
    source: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(pattern=r"^[a-z]+(\.[a-z_]+)+\.v[0-9]+$")]
    subject: Annotated[str, Field(min_length=1, max_length=64)]
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = CONTENT_TYPE
    data: dict[str, Any]


@dataclass(frozen=True)
class EventType:
    """One version of one event: its CloudEvents type (also the routing key) and its payload model."""

    name: str
    version: int
    payload: type[Payload]

    @property
    def type(self) -> str:
        return f"{self.name}.v{self.version}"

    @property
    def routing_key(self) -> str:
        return self.type


@dataclass(frozen=True)
class ReceivedEvent:
    """An event as a consumer sees it: the envelope plus its payload, validated tolerantly, and which
    attempt of its delivery this is (1-based, as the consumer's runtime counts it; 1 outside one)."""

    envelope: CloudEvent
    data: Payload
    attempt: int = 1

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def subject(self) -> str:
        return self.envelope.subject


class InvalidEvent(ValueError):
    """A message that no retry can make valid: not JSON, not a CloudEvent, unknown type or version."""


def event_id_for(workflow_id: str, event_type: EventType) -> str:
    """The id of the event a saga emits: the same workflow and type always give the same id, so a
    retried or replayed step never creates a second event. Derived from the workflow id (stable across
    resets), never the run id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{workflow_id}/{event_type.type}"))


def new_event(
    event_type: EventType, *, event_id: str, subject: str, time: datetime, data: Payload
) -> CloudEvent:
    """Build an envelope for a payload; strict: the payload must be exactly the registered model."""
    if type(data) is not event_type.payload:
        raise TypeError(f"{event_type.type} carries {event_type.payload.__name__}, not {type(data).__name__}")
    return CloudEvent(
        id=event_id,
        source=ORDER_EVENTS_SOURCE,
        type=event_type.type,
        subject=subject,
        time=time,
        data=data.model_dump(mode="json"),
    )


def encode_event(event: CloudEvent) -> bytes:
    return event.model_dump_json().encode()


def parse_event(body: bytes, registry: dict[str, EventType]) -> ReceivedEvent:
    """Decode and validate a structured-mode CloudEvent tolerantly. Raises InvalidEvent (permanent)."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidEvent(f"body is not JSON: {err}") from err
    try:
        envelope = CloudEvent.model_validate(raw, extra="ignore")
    except ValidationError as err:
        raise InvalidEvent(f"not a CloudEvents 1.0 envelope: {_first_error(err)}") from err
    event_type = registry.get(envelope.type)
    if event_type is None:
        raise InvalidEvent(f"unknown event type or version {envelope.type!r}")
    try:
        data = event_type.payload.model_validate(envelope.data, extra="ignore")
    except ValidationError as err:
        raise InvalidEvent(f"invalid {envelope.type} payload: {_first_error(err)}") from err
    return ReceivedEvent(envelope=envelope, data=data)


def event_json_schema(event_type: EventType) -> dict[str, Any]:
    """The JSON Schema of a whole event of this type (envelope with its payload), as producers emit it."""
    envelope_schema = CloudEvent.model_json_schema()
    payload_schema = event_type.payload.model_json_schema()
    definitions = payload_schema.pop("$defs", {})
    envelope_schema["properties"]["type"] = {"const": event_type.type, "title": "Type", "type": "string"}
    envelope_schema["properties"]["data"] = {"$ref": f"#/$defs/{event_type.payload.__name__}"}
    envelope_schema["title"] = event_type.type
    envelope_schema["$defs"] = {**definitions, event_type.payload.__name__: payload_schema}
    return envelope_schema


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(root)"
    return f"{location}: {first['msg']} ({err.error_count()} error(s))"
