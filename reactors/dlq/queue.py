"""A reactor's DLQ on the broker: read it in place, inspect one message, redrive a selection.

Reading takes each message with basic.get and never acks it: closing the channel puts every message back,
in order, so listing changes nothing. One operation works on a snapshot: the messages in the DLQ when it
starts (the first basic.get-ok says how many there are), each message id once, so a message that comes back
to the DLQ meanwhile (redriven, failed again at once) is not read a second time. One operation examines at
most `SCAN_LIMIT` messages (it says so when it stopped there: `truncated`).

Operations on one reactor's DLQ are serialised across processes (API replicas, CLI, console): a reader
holds the messages it read unacked, so a second reader at the same time would see only the rest. Each
operation holds a PostgreSQL advisory lock (`pg_try_advisory_xact_lock`) for the reactor; a second one
retries for `BUSY_WAIT_SECONDS`, then raises `DeadLetterQueueBusy`. On SQLite (one machine) it is an
exclusive flock on a file beside the database.

Redriven messages go to the reactor's own queue through the default exchange (never the topic exchange, so
no other reactor sees them again), with a fresh attempt count and `x-redriven` incremented. Each is published
with a publisher confirm before it is acked in the DLQ, so a crash in between leaves a copy in both places,
which the reactor's inbox absorbs: nothing is lost, nothing is applied twice. Each redrive is recorded in the
delivery ledger (`redriven`, with who asked and the reason it had been dead-lettered for).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from sqlalchemy import func, insert, select
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

# How long an operation waits for another one on the same DLQ to finish before it says "busy".
BUSY_WAIT_SECONDS = 10.0
BUSY_POLL_SECONDS = 0.2

Progress = Callable[[int], None]
EVERYTHING = Selection()


class DeadLetterQueueBusy(Exception):
    """Another operation (an operator's listing, dry run or redrive) holds this reactor's DLQ."""

    def __init__(self, reactor: str) -> None:
        super().__init__(
            f"busy: another operator is reading the dead-letter queue of {reactor}; try again in a moment"
        )


@dataclass(frozen=True)
class Scan:
    """The dead letters a selection matched, oldest first; `examined`: messages read; `truncated`: the
    scan stopped at `SCAN_LIMIT`, so more may match."""

    letters: list[DeadLetter]
    examined: int
    truncated: bool


@dataclass(frozen=True)
class Confirmed:
    """What the operator confirmed after a dry run: its `message_ids` and/or its `count`. A redrive takes
    only those ids, and at most `count` dead letters (oldest first); the rest it matches now arrived
    after the dry run and are left in the DLQ (`Redrive.skipped`)."""

    message_ids: frozenset[str] | None = None
    count: int | None = None

    def takes(self, letter: DeadLetter, taken: int) -> bool:
        if self.message_ids is not None and letter.message_id not in self.message_ids:
            return False
        return self.count is None or taken < self.count


@dataclass
class Redrive:
    """What a redrive did (or, with `dry_run`, would do). `matched`: dead letters the selection matched in
    the DLQ when the operation started (each id once), their ids `matched_ids`, oldest first; `redriven`:
    the ids sent back; `skipped`: matched but not confirmed (they arrived after the dry run), left in the
    DLQ; `missing`: confirmed ids no longer in the DLQ (taken meanwhile)."""

    matched: int
    dry_run: bool
    truncated: bool = False
    redriven: list[str] = field(default_factory=list)
    matched_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _exclusive(sessions: async_sessionmaker[AsyncSession], reactor: str) -> AsyncIterator[None]:
    """Hold the reactor's DLQ for one operation. Raises `DeadLetterQueueBusy` after `BUSY_WAIT_SECONDS`."""
    deadline = asyncio.get_running_loop().time() + BUSY_WAIT_SECONDS
    async with sessions() as session:
        bind = session.get_bind()
        if bind.dialect.name == "postgresql":
            # A transaction-scoped lock: released when the transaction ends, whatever happens to this
            # process.
            async with session.begin():
                key = func.hashtext(f"dlq:{reactor}")
                while not (await session.execute(select(func.pg_try_advisory_xact_lock(key)))).scalar_one():
                    await _wait_or_busy(deadline, reactor)
                yield
            return
    # SQLite (one machine): an exclusive flock on a file beside the database, released when it is closed
    # (or the process dies); every process on the machine sees it.
    lock_file = await asyncio.to_thread(open, _lock_path(bind.engine.url.database, reactor), "a+b")
    try:
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await _wait_or_busy(deadline, reactor)
        yield
    finally:
        lock_file.close()  # releases the lock


def _lock_path(database: str | None, reactor: str) -> Path:
    if database and database != ":memory:":
        return Path(f"{database}.dlq-{reactor}.lock")
    return Path(tempfile.gettempdir()) / f"order-saga-dlq-{reactor}.lock"


async def _wait_or_busy(deadline: float, reactor: str) -> None:
    if asyncio.get_running_loop().time() >= deadline:
        raise DeadLetterQueueBusy(reactor)
    await asyncio.sleep(BUSY_POLL_SECONDS)


@contextlib.asynccontextmanager
async def _reading(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], reactor: str, purpose: str
) -> AsyncIterator[_Reader]:
    timeout = settings.broker_call_timeout_seconds
    async with _exclusive(sessions, reactor):
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
        self.examined = 0  # messages read so far
        self._snapshot = 0  # messages in the DLQ when the first was read

    @property
    def truncated(self) -> bool:
        """The snapshot held more than `SCAN_LIMIT` messages: the rest were not examined."""
        return self._snapshot > SCAN_LIMIT

    async def messages(self) -> AsyncIterator[tuple[AbstractIncomingMessage, DeadLetter]]:
        """The messages in the DLQ when the first one was read, oldest first, up to SCAN_LIMIT, each
        message id once (each left unacked; a later copy of an id is left alone). A DLQ never declared
        (the reactor never ran) holds nothing."""
        seen: set[str] = set()
        self._snapshot = SCAN_LIMIT
        while self.examined < min(self._snapshot, SCAN_LIMIT):
            try:
                message = await self._queue.get(no_ack=False, fail=False, timeout=self._timeout)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return
            if message is None:
                return
            if self.examined == 0 and message.message_count is not None:
                # basic.get-ok counts the messages left behind this one: messages arriving later
                # (redriven ones that fail again at once among them) are beyond the snapshot.
                self._snapshot = message.message_count + 1
            self.examined += 1
            letter = describe(message)
            if letter.message_id in seen:
                continue
            seen.add(letter.message_id)
            yield message, letter


async def scan(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: str,
    selection: Selection = EVERYTHING,
) -> Scan:
    """The reactor's dead letters that `selection` matches, left in place. Raises broker errors and
    `DeadLetterQueueBusy`."""
    found: list[DeadLetter] = []
    async with _reading(settings, sessions, reactor, "list") as reader:
        async for _message, letter in reader.messages():
            if selection.matches(letter):
                found.append(letter)
    return Scan(found, reader.examined, reader.truncated)


async def list_dead_letters(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: str,
    *,
    limit: int = DEFAULT_LIMIT,
    selection: Selection = EVERYTHING,
) -> list[DeadLetter]:
    """The reactor's dead letters (those `selection` matches), oldest first, at most `limit`, left in
    place."""
    return (await scan(settings, sessions, reactor, selection)).letters[:limit]


async def inspect(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], reactor: str, message_id: str
) -> DeadLetterDetail | None:
    """The dead letter with this message id, its properties, headers and payload; None if absent."""
    async with _reading(settings, sessions, reactor, "inspect") as reader:
        async for message, letter in reader.messages():
            if letter.message_id == message_id:
                return detail_of(message)
    return None


async def redrive(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: str,
    selection: Selection,
    *,
    confirmed: Confirmed | None = None,
    actor: str = "operator",
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Redrive:
    """Send the dead letters `selection` matches back to the reactor's queue (see the module docstring);
    with `dry_run`, only count them. With `confirmed` (what the operator confirmed after the dry run), only
    those: the others matched now are reported `skipped`. `progress(n)` is called after each redriven
    message. Raises `DeadLetterQueueBusy` and broker errors: those redriven before stay redriven (and
    recorded), the rest stay in the DLQ."""
    topology = Topology.from_settings(settings)
    timeout = settings.broker_call_timeout_seconds
    result = Redrive(matched=0, dry_run=dry_run)
    publisher = None if dry_run else ConfirmedPublisher(settings, f"dlq-redrive-{reactor}")
    pending: list[dict[str, object]] = []
    taken = 0
    try:
        async with _reading(settings, sessions, reactor, "redrive") as reader:
            async for message, letter in reader.messages():
                if not selection.matches(letter):
                    continue  # left unacked: back in the DLQ when the channel closes
                result.matched += 1
                result.matched_ids.append(letter.message_id)
                if confirmed is not None and not confirmed.takes(letter, taken):
                    result.skipped.append(letter.message_id)
                    continue
                taken += 1
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
            result.truncated = reader.truncated
    finally:
        await _record(sessions, reactor, pending)
        if publisher is not None:
            await publisher.close()
    if confirmed is not None and confirmed.message_ids is not None:
        result.missing = sorted(confirmed.message_ids - set(result.matched_ids))
    if not dry_run:
        log.info(
            "dlq: %s redrove %d dead letter(s) of %s (%s; %d matched, %d skipped as unconfirmed)",
            actor,
            len(result.redriven),
            reactor,
            selection.describe(),
            result.matched,
            len(result.skipped),
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
