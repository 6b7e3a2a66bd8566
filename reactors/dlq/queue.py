"""A reactor's DLQ on the broker: read it in place, inspect one message, redrive a selection.

Reading takes each message with basic.get and never acks it: closing the channel puts every message back,
in order, so listing changes nothing. One operation examines at most `SCAN_LIMIT` messages (it says so when
it stopped there: `truncated`).

Redriven messages go to the reactor's own queue through the default exchange (never the topic exchange, so
no other reactor sees them again), with a fresh attempt count and `x-redriven` incremented. Each is published
with a publisher confirm before it is acked in the DLQ, so a crash in between leaves a copy in both places,
which the reactor's inbox absorbs: nothing is lost, nothing is applied twice. Each redrive is recorded in the
delivery ledger (`redriven`, with who asked and the reason it had been dead-lettered for).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.models import utcnow
from infra.settings import Settings
from messaging import headers as amqp_headers
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.headers import DeadLetterHeaders
from messaging.topology import Topology
from observability import tracing
from reactors.dlq.letters import UNKNOWN, DeadLetter, DeadLetterDetail, Selection, describe, detail_of, text
from reactors.models import DeliveryOutcome, DeliveryRecord
from reactors.sql import table_of

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1_000
# Most messages one operation examines (each is held unacked by its channel until the operation ends).
SCAN_LIMIT = 10_000
# Ledger rows of a redrive are written this many at a time (a lost ledger row must never hold a message).
LEDGER_CHUNK = 100

Progress = Callable[[int], None]
EVERYTHING = Selection()


@dataclass(frozen=True)
class Scan:
    """The dead letters a selection matched, oldest first; `examined`: messages read; `truncated`: the
    scan stopped at `SCAN_LIMIT`, so more may match."""

    letters: list[DeadLetter]
    examined: int
    truncated: bool


@dataclass
class Redrive:
    """What a redrive did (or, with `dry_run`, would do): `matched` dead letters, the ids `redriven`."""

    matched: int
    dry_run: bool
    truncated: bool = False
    redriven: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _reading(settings: Settings, reactor: str, purpose: str) -> AsyncIterator[_Reader]:
    timeout = settings.broker_call_timeout_seconds
    connection = await connect(settings, f"dlq-{purpose}-{reactor}")
    try:
        channel = await asyncio.wait_for(connection.channel(), timeout)
        # No passive declare: basic.get needs only `read` on the DLQ (the API's broker user has no more).
        name = Topology.from_settings(settings).dead_letter_queue(reactor)
        yield _Reader(await channel.get_queue(name, ensure=False), timeout)
    finally:
        await close_quietly(connection, timeout)  # unacked messages go back to the DLQ, in order


class _Reader:
    def __init__(self, queue: AbstractQueue, timeout: float) -> None:
        self._queue = queue
        self._timeout = timeout

    async def messages(self) -> AsyncIterator[AbstractIncomingMessage]:
        """Every message, oldest first, up to SCAN_LIMIT (each left unacked). A DLQ never declared (the
        reactor never ran) holds nothing."""
        for _ in range(SCAN_LIMIT):
            try:
                message = await self._queue.get(no_ack=False, fail=False, timeout=self._timeout)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return
            if message is None:
                return
            yield message


async def scan(settings: Settings, reactor: str, selection: Selection = EVERYTHING) -> Scan:
    """The reactor's dead letters that `selection` matches, left in place. Raises broker errors."""
    found: list[DeadLetter] = []
    examined = 0
    async with _reading(settings, reactor, "list") as reader:
        async for message in reader.messages():
            examined += 1
            letter = describe(message)
            if selection.matches(letter):
                found.append(letter)
    return Scan(found, examined, examined >= SCAN_LIMIT)


async def list_dead_letters(
    settings: Settings, reactor: str, *, limit: int = DEFAULT_LIMIT, selection: Selection = EVERYTHING
) -> list[DeadLetter]:
    """The reactor's dead letters (those `selection` matches), oldest first, at most `limit`, left in
    place."""
    return (await scan(settings, reactor, selection)).letters[:limit]


async def inspect(settings: Settings, reactor: str, message_id: str) -> DeadLetterDetail | None:
    """The first dead letter with this message id, its properties, headers and payload; None if absent."""
    async with _reading(settings, reactor, "inspect") as reader:
        async for message in reader.messages():
            if describe(message).message_id == message_id:
                return detail_of(message)
    return None


async def redrive(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: str,
    selection: Selection,
    *,
    actor: str = "operator",
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Redrive:
    """Send the dead letters `selection` matches back to the reactor's queue (see the module docstring);
    with `dry_run`, only count them. `progress(n)` is called after each redriven message. Raises broker
    errors: those redriven before stay redriven (and recorded), the rest stay in the DLQ."""
    topology = Topology.from_settings(settings)
    timeout = settings.broker_call_timeout_seconds
    result = Redrive(matched=0, dry_run=dry_run)
    publisher = None if dry_run else ConfirmedPublisher(settings, f"dlq-redrive-{reactor}")
    pending: list[dict[str, object]] = []
    examined = 0
    try:
        async with _reading(settings, reactor, "redrive") as reader:
            async for message in reader.messages():
                examined += 1
                letter = describe(message)
                if not selection.matches(letter):
                    continue  # left unacked: back in the DLQ when the channel closes
                result.matched += 1
                if publisher is None:
                    continue
                await _send_back(publisher, topology.queue(reactor), message, letter)
                await asyncio.wait_for(message.ack(), timeout)
                result.redriven.append(letter.message_id)
                pending.append(_ledger_row(reactor, message, letter, actor))
                if len(pending) >= LEDGER_CHUNK:
                    await _record(sessions, reactor, pending)
                if progress is not None:
                    progress(len(result.redriven))
    finally:
        await _record(sessions, reactor, pending)
        if publisher is not None:
            await publisher.close()
    result.truncated = examined >= SCAN_LIMIT
    if not dry_run:
        log.info(
            "dlq: %s redrove %d dead letter(s) of %s (%s)",
            actor,
            len(result.redriven),
            reactor,
            selection.describe(),
        )
    return result


async def _send_back(
    publisher: ConfirmedPublisher, queue: str, message: AbstractIncomingMessage, letter: DeadLetter
) -> None:
    previous = message.headers.get(DeadLetterHeaders.REDRIVEN)
    headers = amqp_headers.without(message.headers, amqp_headers.DEAD_LETTER_BOOKKEEPING)
    headers[amqp_headers.ATTEMPT] = 1
    headers[DeadLetterHeaders.REDRIVEN] = (previous if isinstance(previous, int) else 0) + 1
    await publisher.publish(
        exchange="",
        routing_key=queue,
        body=message.body,
        message_id=letter.message_id,
        message_type=message.type,
        content_type=message.content_type or "application/json",
        headers=headers,
    )


def _ledger_row(
    reactor: str, message: AbstractIncomingMessage, letter: DeadLetter, actor: str
) -> dict[str, object]:
    return {
        "consumer": reactor,
        "message_id": letter.message_id,
        "event_type": None if letter.event_type == UNKNOWN else letter.event_type,
        "subject": None if letter.order_id == UNKNOWN else letter.order_id,
        "outcome": DeliveryOutcome.REDRIVEN,
        "attempt": letter.attempts,
        "detail": f"redriven from the DLQ by {actor}; was: {letter.reason}"[:2_000],
        "created_at": utcnow(),
        # The message kept its traceparent: the redrive stays in the order's trace.
        "trace_id": tracing.trace_id_of(text(message.headers.get(tracing.TRACEPARENT) or "")),
    }


async def _record(
    sessions: async_sessionmaker[AsyncSession], reactor: str, rows: list[dict[str, object]]
) -> None:
    """Write and clear `rows`; never raises (the messages are redriven already)."""
    if not rows:
        return
    try:
        async with sessions() as session, session.begin():
            await session.execute(insert(table_of(DeliveryRecord)), rows)
    except Exception as err:
        log.warning("dlq: %d redrive(s) of %s not recorded in the ledger: %s", len(rows), reactor, err)
    rows.clear()
