"""Event contracts: schema snapshots, strict producers, tolerant consumers, deterministic ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from contracts.envelope import (
    EVENT_ID_NAMESPACE,
    EventType,
    InvalidEvent,
    encode_event,
    event_id_for,
    new_event,
    parse_event,
)
from contracts.orders import (
    EVENT_TYPES,
    ORDER_CANCELLED_V1,
    ORDER_SHIPPED_V1,
    OrderLineV1,
    OrderShippedV1,
    ShipmentV1,
)
from contracts.snapshots import render_schema, snapshot_path
from tests.events import cancelled_payload

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def shipped_payload(**overrides: object) -> OrderShippedV1:
    fields: dict[str, object] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "customer_email": "c-1@example.com",
        "currency": "EUR",
        "total_amount": 2_500,
        "lines": (OrderLineV1(sku="SKU-A", quantity=2, unit_price=1_250, line_total=2_500),),
        "shipment": ShipmentV1(carrier="sim", tracking_number="T-1"),
        "shipped_at": NOW,
        **overrides,
    }
    return OrderShippedV1.model_validate(fields)


@pytest.mark.parametrize("event_type", EVENT_TYPES.values(), ids=lambda event: event.type)
def test_the_schema_matches_its_committed_snapshot(event_type: EventType) -> None:
    """A change to an event's shape must be deliberate: refresh with `python -m contracts.snapshots`, then
    review the diff (a breaking change needs a new version instead)."""
    path = snapshot_path(event_type)
    assert path.exists(), f"no snapshot for {event_type.type}: run python -m contracts.snapshots"
    assert render_schema(event_type) == path.read_text(), f"{event_type.type} changed: see {path}"


def test_every_event_has_its_version_in_type_and_routing_key() -> None:
    assert sorted(EVENT_TYPES) == ["order.cancelled.v1", "order.shipped.v1"]
    for event_type in EVENT_TYPES.values():
        assert event_type.type.endswith(f".v{event_type.version}")
        assert event_type.routing_key == event_type.type


def test_producers_are_strict() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        shipped_payload(gift_wrap=True)
    with pytest.raises(ValidationError):
        shipped_payload(shipped_at=datetime(2026, 1, 2))  # naive time
    with pytest.raises(TypeError):
        new_event(ORDER_CANCELLED_V1, event_id="x", subject="o-1", time=NOW, data=shipped_payload())


def test_consumers_tolerate_unknown_fields_and_read_the_payload() -> None:
    event = new_event(ORDER_SHIPPED_V1, event_id="e-1", subject="o-1", time=NOW, data=shipped_payload())
    raw = json.loads(encode_event(event))
    raw["traceparent"] = "00-abc"  # a CloudEvents extension attribute
    raw["data"]["gift_wrap"] = True
    raw["data"]["lines"][0]["colour"] = "red"

    received = parse_event(json.dumps(raw).encode(), EVENT_TYPES)

    assert isinstance(received.data, OrderShippedV1)
    assert received.data == shipped_payload()
    assert (received.id, received.type, received.subject) == ("e-1", "order.shipped.v1", "o-1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff not json", "not JSON"),
        (b'{"id": "x"}', "not a CloudEvents 1.0 envelope"),
        (b"[]", "not a CloudEvents 1.0 envelope"),
    ],
)
def test_garbage_is_an_invalid_event(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_event(body, EVENT_TYPES)


def test_an_unknown_version_or_a_broken_payload_is_an_invalid_event() -> None:
    event = new_event(ORDER_SHIPPED_V1, event_id="e-1", subject="o-1", time=NOW, data=shipped_payload())
    raw = json.loads(encode_event(event))
    with pytest.raises(InvalidEvent, match=r"unknown event type or version 'order\.shipped\.v2'"):
        parse_event(json.dumps({**raw, "type": "order.shipped.v2"}).encode(), EVENT_TYPES)
    del raw["data"]["shipment"]
    with pytest.raises(InvalidEvent, match=r"invalid order\.shipped\.v1 payload: shipment"):
        parse_event(json.dumps(raw).encode(), EVENT_TYPES)


def test_event_ids_are_deterministic_per_workflow_and_type() -> None:
    shipped = event_id_for("order-o-1", ORDER_SHIPPED_V1)
    assert shipped == event_id_for("order-o-1", ORDER_SHIPPED_V1)
    assert shipped == str(uuid.uuid5(EVENT_ID_NAMESPACE, "order-o-1/order.shipped.v1"))
    assert shipped != event_id_for("order-o-1", ORDER_CANCELLED_V1)
    assert shipped != event_id_for("order-o-2", ORDER_SHIPPED_V1)


def test_a_cancellation_says_what_was_compensated() -> None:
    payload = cancelled_payload(
        final_status="CANCELLED", reason="CUSTOMER_CANCELLED", detail="changed my mind", at=NOW
    )
    assert payload.compensations == ("refund_payment", "release_inventory")
    with pytest.raises(ValidationError):
        payload.model_validate({**payload.model_dump(), "final_status": "SHIPPED"})
