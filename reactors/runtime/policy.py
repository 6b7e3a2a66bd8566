"""Retry and dead-letter policy: where a message goes when it could not be applied.

- `PermanentError` (and anything `parse_event` refuses): copied to `<ns>.<reactor>.dlq` at once.
- Any other error on attempt n < `reactor_max_attempts`: copied to the wait queue of attempt n (its TTL is
  the delay; the broker then hands it back to this reactor's queue only), with `x-attempt` = n + 1.
- At `reactor_max_attempts`: copied to the DLQ ("gave up after n attempt(s): ...").

Each copy is a confirmed publish (not broker dead-lettering, which is at-most-once here, see
`messaging.topology`), then the ledger rows are written, then the original is acked: a crash in between
leaves two copies, which the inbox absorbs. Errors: the publish or the ack raise `BROKER_UNAVAILABLE`
errors (or `aio_pika.exceptions.DeliveryError` when a target queue is missing); the message then stays
unacked and the broker delivers it again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from aio_pika.abc import AbstractIncomingMessage

from contracts.envelope import ReceivedEvent
from infra.models import utcnow
from infra.settings import Settings
from messaging import headers
from messaging.broker import ConfirmedPublisher
from messaging.headers import DeadLetterHeaders
from messaging.topology import Topology
from reactors.base import PermanentError
from reactors.models import DeliveryOutcome
from reactors.runtime.persistence import Ledger

log = logging.getLogger(__name__)


class FailurePolicy:
    """Settles the messages of one reactor that failed, over its own confirmed publisher."""

    def __init__(self, settings: Settings, topology: Topology, ledger: Ledger) -> None:
        self._settings = settings
        self._topology = topology
        self._ledger = ledger
        self._reactor = ledger.consumer
        self._publisher = ConfirmedPublisher(settings, f"reactor-{self._reactor}-publish")

    async def close(self) -> None:
        await self._publisher.close()

    async def settle(
        self,
        message: AbstractIncomingMessage,
        event: ReceivedEvent,
        attempt: int,
        error: Exception,
        received_at: datetime,
    ) -> str:
        """Retry or dead-letter a message whose handling raised `error`, then ack it; the ledger outcome
        (`retry_scheduled` or `dead_lettered`)."""
        reason = describe(error)
        if isinstance(error, PermanentError):
            await self.dead_letter(message, event, attempt, reason, received_at)
            return DeliveryOutcome.DEAD_LETTERED
        if attempt >= self._settings.reactor_max_attempts:
            await self.dead_letter(
                message, event, attempt, f"gave up after {attempt} attempt(s): {reason}", received_at
            )
            return DeliveryOutcome.DEAD_LETTERED
        wait_queue = self._topology.retry_queue_for(self._reactor, attempt)
        await self._publisher.publish(
            exchange="",
            routing_key=wait_queue,
            body=message.body,
            message_id=event.id,
            message_type=event.type,
            content_type=message.content_type or "application/json",
            headers={
                **headers.without(message.headers, headers.BROKER_BOOKKEEPING),
                headers.ATTEMPT: attempt + 1,
                headers.LAST_ERROR: reason[:500],
            },
        )
        await self._ledger.record(
            event.id,
            event,
            attempt,
            received_at,
            DeliveryOutcome.RETRY_SCHEDULED,
            f"{reason} -> {wait_queue}",
        )
        await asyncio.wait_for(message.ack(), self._settings.broker_call_timeout_seconds)
        log.info("%s: %s attempt %d failed (%s), retrying", self._reactor, event.id, attempt, reason)
        return DeliveryOutcome.RETRY_SCHEDULED

    async def dead_letter(
        self,
        message: AbstractIncomingMessage,
        event: ReceivedEvent | None,
        attempt: int,
        reason: str,
        received_at: datetime,
    ) -> None:
        """Copy the message to the DLQ with the `DeadLetterHeaders` (`event` is None when the message could
        not be parsed), record it, ack it."""
        message_id = event.id if event is not None else (message.message_id or "unknown")
        await self._publisher.publish(
            exchange="",
            routing_key=self._topology.dead_letter_queue(self._reactor),
            body=message.body,
            message_id=message_id,
            message_type=event.type if event is not None else message.type,
            content_type=message.content_type or "application/json",
            headers={
                **headers.without(message.headers, headers.BROKER_BOOKKEEPING),
                DeadLetterHeaders.REACTOR: self._reactor,
                DeadLetterHeaders.REASON: reason[:1_000],
                DeadLetterHeaders.ATTEMPTS: attempt,
                DeadLetterHeaders.AT: utcnow().isoformat(),
                DeadLetterHeaders.EVENT_TYPE: event.type if event is not None else (message.type or ""),
                DeadLetterHeaders.SUBJECT: event.subject if event is not None else "",
            },
        )
        await self._ledger.record(
            message_id, event, attempt, received_at, DeliveryOutcome.DEAD_LETTERED, reason
        )
        await asyncio.wait_for(message.ack(), self._settings.broker_call_timeout_seconds)
        log.warning("%s: dead-lettered %s: %s", self._reactor, message_id, reason)


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Which attempt this delivery is: the `x-attempt` header, 1 when absent or invalid."""
    value = message.headers.get(headers.ATTEMPT)
    return value if isinstance(value, int) and value >= 1 else 1


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
