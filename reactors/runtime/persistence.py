"""The reactor's rows: inbox (deduplication) and delivery ledger, written with the handler's effects.

Shapes: a `Delivery` is one message of a batch, parsed; a ledger row is a plain dict of
`reactors.models.DeliveryRecord` columns, one per delivery: its outcome, written when it is settled, with
`duration_ms` since its receipt (so the receipt is `created_at - duration_ms`; the timeline shows it as
`delivery.received`). Rows written before this layout came in pairs (`received`, then the outcome).

Errors: whatever the database raises propagates (the caller decides: a failed batch is handled again
message by message), except in `Ledger.record`, which logs and swallows, since losing a ledger row must not
lose a message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from infra.models import utcnow
from messaging.headers import DeadLetterHeaders
from observability import tracing
from reactors.base import Reactor
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.runtime.replaying import Replayed, claim_reapplies, replay_of, settle_backfills
from reactors.sql import dialect_insert, table_of

log = logging.getLogger(__name__)

MAX_DETAIL_LENGTH = 2_000


@dataclass(eq=False)  # hashed by identity: two copies of one event are two deliveries
class Delivery:
    """A parsed message of a batch: the message, its event, which attempt this is (1-based), and its
    consumer span (started, not current; ended once the delivery is settled)."""

    message: AbstractIncomingMessage
    event: ReceivedEvent
    attempt: int
    span: trace.Span

    @property
    def trace_id(self) -> str | None:
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    @property
    def redriven(self) -> str | None:
        """The ledger detail of a processed delivery that came back from the DLQ."""
        return "redriven" if self.message.headers.get(DeadLetterHeaders.REDRIVEN) else None

    @property
    def replay(self) -> Replayed | None:
        """The operator's replay this delivery is a copy of, if it is one."""
        return replay_of(self.event.id, self.message.headers)


class Ledger:
    """Inbox and ledger rows of one reactor (`consumer` = the reactor's name)."""

    def __init__(self, reactor: Reactor, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._reactor = reactor
        self._sessions = sessions

    @property
    def consumer(self) -> str:
        return self._reactor.name

    async def applied(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these events have an inbox row already (a hint: the inbox insert is the real guard)."""
        async with self._sessions() as session:
            return set(
                await session.scalars(
                    select(InboxMessage.message_id).where(
                        InboxMessage.consumer == self.consumer, InboxMessage.message_id.in_(event_ids)
                    )
                )
            )

    async def commit(
        self, deliveries: Sequence[Delivery], leads: dict[str, Delivery], received_at: datetime
    ) -> dict[Delivery, str]:
        """One transaction: the inbox rows of `leads` (the first copy of each event), the reactor's effects
        for those not applied before, and the ledger row of every delivery of an event in `leads`.
        Returns the outcome of each such delivery: `processed` for a lead applied now, else
        `duplicate_ignored`. Deliveries of events not in `leads` are not touched. A copy from an operator's
        replay is settled on its replay item, and a re-apply's event applied again past its inbox row
        (`replaying`). Raises what the database or the reactor raises (nothing is then written)."""
        outcomes: dict[Delivery, str] = {}
        rows: list[dict[str, object]] = []
        replays = {
            delivery.event.id: copy
            for delivery in deliveries
            if delivery.event.id in leads and (copy := delivery.replay) is not None
        }
        now = utcnow()  # the batch's rows are settled together
        async with self._sessions() as session, session.begin():
            fresh = await self._insert_inbox(session, [lead.event for lead in leads.values()])
            reapplied: set[str] = set()
            if replays and self._reactor.reset is not None:
                reapplied = await claim_reapplies(session, self.consumer, replays.values())
                to_reset = [leads[event_id].event for event_id in reapplied - fresh]
                if to_reset:
                    await self._reactor.reset(to_reset, session)
            applied_now = fresh | reapplied
            to_apply = [lead.event for lead in leads.values() if lead.event.id in applied_now]
            if len(to_apply) == 1:
                await self._reactor.apply(to_apply[0], session)  # a lone event goes through `apply`
            elif to_apply:
                await self._reactor.apply_all(to_apply, session)
            if replays:
                await settle_backfills(session, self.consumer, replays.values(), fresh)
            for delivery in deliveries:
                lead = leads.get(delivery.event.id)
                if lead is None:
                    continue
                event_id = delivery.event.id
                processed = delivery is lead and event_id in applied_now
                outcome = DeliveryOutcome.PROCESSED if processed else DeliveryOutcome.DUPLICATE_IGNORED
                detail = delivery.redriven if processed else None
                if delivery is lead and event_id in replays:
                    detail = replays[event_id].detail(applied=processed, reset=event_id in reapplied - fresh)
                rows.append(
                    self.row(
                        event_id,
                        delivery.event,
                        delivery.attempt,
                        received_at,
                        delivery.trace_id,
                        outcome,
                        detail,
                        now,
                    )
                )
                outcomes[delivery] = outcome
            await _write(session, rows)
        return outcomes

    async def record(
        self,
        message_id: str,
        event: ReceivedEvent | None,
        attempt: int,
        received_at: datetime,
        outcome: str,
        detail: str,
    ) -> None:
        """The ledger row of a delivery that made no effect (retried, dead-lettered), in its own
        transaction, in the current span's trace. Never raises: a lost ledger row must not lose the
        message."""
        trace_id = tracing.current_trace_id()
        try:
            async with self._sessions() as session, session.begin():
                await _write(
                    session, [self.row(message_id, event, attempt, received_at, trace_id, outcome, detail)]
                )
        except Exception as err:
            log.warning("%s: could not record %s of %s: %s", self.consumer, outcome, message_id, err)

    def row(
        self,
        message_id: str,
        event: ReceivedEvent | None,
        attempt: int,
        received_at: datetime,
        trace_id: str | None,
        outcome: str,
        detail: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, object]:
        """The ledger row of a delivery: `outcome` at `now` (default: now), with the duration since
        `received_at` in milliseconds and `detail` cut to 2,000 characters."""
        now = now or utcnow()
        return {
            "consumer": self.consumer,
            "message_id": message_id,
            "event_type": event.type if event is not None else None,
            "subject": event.subject if event is not None else None,
            "attempt": attempt,
            "trace_id": trace_id,
            "outcome": outcome,
            "detail": detail[:MAX_DETAIL_LENGTH] if detail else None,
            "created_at": now,
            "duration_ms": (now - received_at).total_seconds() * 1000,
        }

    async def _insert_inbox(self, session: AsyncSession, events: Sequence[ReceivedEvent]) -> set[str]:
        """Insert the events' inbox rows; the ids of those that were not there yet."""
        if not events:
            return set()
        now = utcnow()
        # Parameters apart from the statement: its compiled form is cached (SQLAlchemy's "insertmanyvalues"
        # still sends one multi-row INSERT).
        inserted = await session.scalars(
            dialect_insert(session)(InboxMessage)
            .on_conflict_do_nothing(index_elements=[InboxMessage.consumer, InboxMessage.message_id])
            .returning(InboxMessage.message_id),
            [
                {
                    "consumer": self.consumer,
                    "message_id": event.id,
                    "event_type": event.type,
                    "subject": event.subject,
                    "processed_at": now,
                }
                for event in events
            ],
        )
        return set(inserted)


async def _write(session: AsyncSession, rows: list[dict[str, object]]) -> None:
    """One Core insert for all the rows (no ORM objects: the ledger is written on every message)."""
    if rows:
        await session.execute(insert(table_of(DeliveryRecord)), rows)
