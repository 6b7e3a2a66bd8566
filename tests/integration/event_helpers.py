"""Publishing events directly (bypassing the saga) for the reactor tests; `tests.events` builds them."""

from __future__ import annotations

import uuid

from contracts.envelope import CloudEvent, encode_event
from messaging.broker import ConfirmedPublisher
from tests.integration.conftest import EventStack


async def publish(
    stack: EventStack,
    event: CloudEvent | None = None,
    *,
    body: bytes | None = None,
    routing_key: str | None = None,
    message_id: str | None = None,
    exchange: str | None = None,
    headers: dict[str, object] | None = None,
) -> None:
    """Publish like the relay does (persistent, confirmed, mandatory), or any raw body; `headers` as the
    relay sets them (e.g. `traceparent`)."""
    publisher = ConfirmedPublisher(stack.settings, "test-publisher")
    try:
        await publisher.publish(
            exchange=stack.topology.exchange if exchange is None else exchange,
            routing_key=routing_key or (event.type if event else "order.shipped.v1"),
            body=body if body is not None else encode_event(event) if event else b"",
            message_id=message_id or (event.id if event else str(uuid.uuid4())),
            message_type=event.type if event else None,
            headers=headers,
        )
    finally:
        await publisher.close()
