"""Lost retries: re-drive, from the outbox, a retry that its wait queue never handed back.

A retry waits in `<ns>.<reactor>.wait.<ms>ms` and comes back by broker dead-lettering, which is at-most-once
here (see `messaging.topology`). RabbitMQ drops such a hop when the target queue has no leader at that
instant: after `rabbitmqctl stop_app`/`start_app` (or a node restart) each quorum queue elects its leader on
its own, and a wait queue whose messages expired while the broker was down dead-letters them at once, often
before `<ns>.<reactor>` has a leader ("leader cast - leader not known. Command is dropped." in the broker's
log). Nothing is left in any queue, nothing is dead-lettered: the event is gone from the broker.

The database still knows: the ledger's last row for (reactor, event) is `retry_scheduled` and the reactor
has no inbox row for it. `RetrySweep.sweep_once` finds such retries overdue by more than
`reactor_retry_lost_after_seconds` past the longest wait, republishes the event from its outbox row
(confirmed publish to `<ns>.<reactor>` over the default exchange, with `x-attempt` = the lost attempt) and
writes a `retry_recovered` ledger row, so that the next sweep leaves it alone. A retry that was only slow (a
backlog in the reactor's queue) gets a second copy, which the inbox absorbs, as every duplicate.

Replicas: candidate rows are locked `FOR UPDATE SKIP LOCKED` (PostgreSQL) for the publish, so two sweeps do
not re-drive one retry twice; SQLite has one writer anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta

from aio_pika.exceptions import DeliveryError
from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from contracts.envelope import STRUCTURED_CONTENT_TYPE
from infra.models import utcnow
from infra.settings import Settings
from messaging import headers
from messaging.broker import BROKER_UNAVAILABLE, ConfirmedPublisher
from messaging.models import OutboxEvent
from messaging.topology import Topology
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage

log = logging.getLogger(__name__)

# Most retries re-driven in one transaction (the rest wait for the next sweep).
SWEEP_LIMIT = 200
RECOVERED = "recovered: its retry never came back from the wait queue"


class RetrySweep:
    """Re-drives the lost retries of one reactor (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        reactor: str,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self._settings = settings
        self._topology = topology
        self._reactor = reactor
        self._sessions = sessions
        self._publisher = ConfirmedPublisher(settings, f"reactor-{self._reactor}-recover")

    @property
    def overdue_after(self) -> timedelta:
        """How old a `retry_scheduled` row with nothing after it must be to count as lost."""
        longest_wait_ms = max(self._settings.reactor_retry_delays_ms)
        return timedelta(seconds=longest_wait_ms / 1000 + self._settings.reactor_retry_lost_after_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every `reactor_retry_sweep_interval_seconds` until `stop` is set; never raises (a failed
        sweep is logged and tried again at the next interval)."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.reactor_retry_sweep_interval_seconds)
                if stop.is_set():
                    break
                try:
                    await self.sweep_once()
                except Exception as err:  # the broker or the database is away
                    log.warning("%s: retry sweep failed, trying again later: %s", self._reactor, err)
        finally:
            await self._publisher.close()

    async def close(self) -> None:
        await self._publisher.close()

    async def sweep_once(self) -> int:
        """Re-drive every lost retry found now (up to `SWEEP_LIMIT`); how many were re-driven. Raises what
        the database or the broker raises (those re-driven before it stay recorded)."""
        cutoff = utcnow() - self.overdue_after
        later = aliased(DeliveryRecord)
        retry = DeliveryRecord
        async with self._sessions() as session, session.begin():
            lost = (
                await session.execute(
                    select(
                        retry.id,
                        retry.message_id,
                        retry.attempt,
                        OutboxEvent.envelope,
                        OutboxEvent.event_type,
                    )
                    .outerjoin(OutboxEvent, OutboxEvent.id == retry.message_id)
                    .where(
                        retry.consumer == self._reactor,
                        retry.outcome == DeliveryOutcome.RETRY_SCHEDULED,
                        retry.created_at < cutoff,
                        ~exists().where(
                            and_(
                                later.consumer == retry.consumer,
                                later.message_id == retry.message_id,
                                later.id > retry.id,
                            )
                        ),
                        ~exists().where(
                            and_(
                                InboxMessage.consumer == retry.consumer,
                                InboxMessage.message_id == retry.message_id,
                            )
                        ),
                    )
                    .order_by(retry.id)
                    .limit(SWEEP_LIMIT)
                    .with_for_update(of=retry, skip_locked=True)
                )
            ).all()
            redriven = 0
            failure: Exception | None = None
            try:
                for _row_id, event_id, attempt, envelope, event_type in lost:
                    if envelope is None:
                        log.error(
                            "%s: retry of %s lost and its outbox row is gone: cannot re-drive it",
                            self._reactor,
                            event_id,
                        )
                        continue
                    try:
                        await self._publisher.publish(
                            exchange="",
                            routing_key=self._topology.queue(self._reactor),
                            body=json.dumps(envelope, separators=(",", ":")).encode(),
                            message_id=event_id,
                            message_type=event_type,
                            content_type=STRUCTURED_CONTENT_TYPE,
                            # The attempt the wait queue would have handed back: the retry budget holds.
                            headers={headers.ATTEMPT: attempt + 1, headers.LAST_ERROR: RECOVERED},
                        )
                    except (*BROKER_UNAVAILABLE, DeliveryError) as err:  # type: ignore[misc]
                        failure = err  # those re-driven so far are recorded; the rest next sweep
                        break
                    now = utcnow()
                    session.add(
                        DeliveryRecord(
                            consumer=self._reactor,
                            message_id=event_id,
                            event_type=event_type,
                            subject=envelope.get("subject") if isinstance(envelope, dict) else None,
                            outcome=DeliveryOutcome.RETRY_RECOVERED,
                            attempt=attempt + 1,
                            detail=f"{RECOVERED} -> {self._topology.queue(self._reactor)}",
                            created_at=now,
                        )
                    )
                    redriven += 1
            finally:
                if redriven:
                    log.warning(
                        "%s: re-drove %d retr%s lost by the broker (from the outbox)",
                        self._reactor,
                        redriven,
                        "y" if redriven == 1 else "ies",
                    )
        if failure is not None:
            raise failure
        return redriven
