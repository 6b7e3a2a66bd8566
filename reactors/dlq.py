"""Dead letters of one reactor: list them, redrive some or all back to that reactor only.

    order-saga dlq list notification
    order-saga dlq redrive notification <message-id> [<message-id> ...]
    order-saga dlq redrive notification --all

Redriven messages go to the reactor's own queue (through the default exchange, not the topic exchange, so no
other reactor sees them again) with a fresh attempt count; the inbox still deduplicates them. Listing reads
the messages without acking them, so they stay in the DLQ, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.settings import Settings
from messaging import headers as amqp_headers
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.headers import DeadLetterHeaders
from messaging.topology import Topology
from observability import tracing
from reactors.models import DeliveryOutcome, DeliveryRecord

DEFAULT_LIMIT = 1_000


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    event_type: str
    order_id: str
    reason: str
    attempts: int
    dead_lettered_at: str


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """What a dead letter is and why it is there, from the runtime's headers or the broker's x-death."""
    headers = message.headers
    body = _json_body(message.body)
    reason = headers.get(DeadLetterHeaders.REASON)
    attempts = headers.get(DeadLetterHeaders.ATTEMPTS)
    at = headers.get(DeadLetterHeaders.AT)
    deaths = headers.get(amqp_headers.DEATHS)
    if reason is None and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        # Dead-lettered by the broker itself: the consumer failed to ack it x-delivery-limit times.
        death = deaths[0]
        reason = (
            f"broker: {_text(death.get('reason'))} on {_text(death.get('queue'))} (consumer never acked it)"
        )
        attempts = death.get("count")
        at = str(death.get("time", ""))
    return DeadLetter(
        message_id=message.message_id or str(body.get("id", "?")),
        event_type=str(headers.get(DeadLetterHeaders.EVENT_TYPE) or body.get("type") or message.type or "?"),
        order_id=str(headers.get(DeadLetterHeaders.SUBJECT) or body.get("subject") or "?"),
        reason=str(reason or "?"),
        attempts=attempts if isinstance(attempts, int) else 0,
        dead_lettered_at=str(at or ""),
    )


async def list_dead_letters(
    settings: Settings, reactor: str, *, limit: int = DEFAULT_LIMIT
) -> list[DeadLetter]:
    """The reactor's dead letters, oldest first, left in place."""
    topology = Topology.from_settings(settings)
    timeout = settings.broker_call_timeout_seconds
    connection = await connect(settings, f"dlq-list-{reactor}")
    try:
        channel = await asyncio.wait_for(connection.channel(), timeout)
        queue = await channel.get_queue(topology.dead_letter_queue(reactor), ensure=True)
        found: list[DeadLetter] = []
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=timeout)
            if message is None:
                break
            found.append(describe(message))
        return found  # never acked: closing the channel puts every message back
    finally:
        await close_quietly(connection, timeout)


async def redrive(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: str,
    message_ids: Collection[str] | None,
) -> list[str]:
    """Send the selected dead letters (`None`: all) back to the reactor's queue; returns their ids.

    Each is published (confirmed) before it is removed from the DLQ, so a crash in between leaves a copy in
    both places, which the inbox absorbs. Each redrive is recorded in the delivery ledger.
    """
    topology = Topology.from_settings(settings)
    timeout = settings.broker_call_timeout_seconds
    publisher = ConfirmedPublisher(settings, f"dlq-redrive-{reactor}")
    connection = await connect(settings, f"dlq-redrive-{reactor}")
    redriven: list[str] = []
    try:
        channel = await asyncio.wait_for(connection.channel(), timeout)
        queue = await channel.get_queue(topology.dead_letter_queue(reactor), ensure=True)
        while True:
            message = await queue.get(no_ack=False, fail=False, timeout=timeout)
            if message is None:
                break
            letter = describe(message)
            if message_ids is not None and letter.message_id not in message_ids:
                continue  # left unacked: back in the DLQ when the channel closes
            previous = message.headers.get(DeadLetterHeaders.REDRIVEN)
            headers = amqp_headers.without(message.headers, amqp_headers.DEAD_LETTER_BOOKKEEPING)
            headers[amqp_headers.ATTEMPT] = 1
            headers[DeadLetterHeaders.REDRIVEN] = (previous if isinstance(previous, int) else 0) + 1
            await publisher.publish(
                exchange="",
                routing_key=topology.queue(reactor),
                body=message.body,
                message_id=letter.message_id,
                message_type=message.type,
                content_type=message.content_type or "application/json",
                headers=headers,
            )
            await asyncio.wait_for(message.ack(), timeout)
            redriven.append(letter.message_id)
            async with sessions() as session, session.begin():
                session.add(
                    DeliveryRecord(
                        consumer=reactor,
                        message_id=letter.message_id,
                        event_type=None if letter.event_type == "?" else letter.event_type,
                        subject=None if letter.order_id == "?" else letter.order_id,
                        outcome=DeliveryOutcome.REDRIVEN,
                        attempt=letter.attempts,
                        detail=f"redriven from DLQ; was: {letter.reason}"[:2_000],
                        # The message kept its traceparent: the redrive stays in the order's trace.
                        trace_id=tracing.trace_id_of(_text(message.headers.get(tracing.TRACEPARENT) or "")),
                    )
                )
        return redriven
    finally:
        await close_quietly(connection, timeout)
        await publisher.close()


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}
