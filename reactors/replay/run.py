"""Running a replay: record it, publish its events to the reactor's own queue, report its progress.

`start` records the replay (`event_replays`) and one item per event (`event_replay_items`) in one
transaction, then publishes. Each event goes to `<ns>.<reactor>` through the default exchange, never the topic
exchange, so no other reactor sees it; it carries the `ReplayHeaders` (the replay's id and mode) and the
traceparent of the step that wrote it (the replay shows in the order's trace). Publishing is confirmed, in
chunks of `CHUNK`: after each chunk one transaction marks its items published and writes a `replayed` row per
event in the delivery ledger, which the order's timeline shows. The reactor then settles each item when it
handles the copy (`reactors.runtime.replaying`): `applied` or `skipped` (a backfill of an event it had
applied).

A replay whose publishing stopped (broker away, process killed) says `failed` or stays `publishing`;
`resume` publishes its items not published yet. An item published twice (a crash between the confirm and the
mark) is absorbed like any duplicate: by the inbox for a backfill, by the claimed grant for a re-apply.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import STRUCTURED_CONTENT_TYPE
from infra.models import utcnow
from infra.settings import Settings
from messaging.broker import ConfirmedPublisher
from messaging.headers import ReplayHeaders
from messaging.models import OutboxEvent
from messaging.topology import Topology
from observability import tracing
from reactors.base import Reactor
from reactors.models import (
    DeliveryOutcome,
    DeliveryRecord,
    EventReplay,
    ReplayItem,
    ReplayMode,
    ReplayOutcome,
)
from reactors.replay.selection import (
    ReplayNotFound,
    ReplaySelection,
    SelectionInvalid,
    candidates,
    check_mode,
)
from reactors.sql import table_of

log = logging.getLogger(__name__)

CHUNK = 100
PUBLISHING, PUBLISHED, FAILED = "publishing", "published", "failed"

# Told (published so far, total) after each chunk.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayStatus:
    """A replay and how far it got. `state`: publishing, published or failed (with `last_error`);
    `published` events sent so far; the reactor has `applied` or `skipped` so many of them; `missing`: gone
    from the outbox before they could be sent. `done` once every event is settled."""

    id: str
    reactor: str
    mode: str
    selection: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    total: int
    published: int
    applied: int
    skipped: int
    missing: int
    state: str
    last_error: str | None

    @property
    def pending(self) -> int:
        return self.total - self.applied - self.skipped - self.missing

    @property
    def done(self) -> bool:
        return self.state == PUBLISHED and self.pending == 0


async def start(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    reactor: Reactor,
    mode: str,
    selection: ReplaySelection,
    *,
    actor: str,
    progress: Progress | None = None,
) -> ReplayStatus:
    """Record the replay, then publish it (see the module docstring). Raises `ReplayRefused` or
    `SelectionInvalid` before anything is recorded; a publishing failure is recorded on the replay
    (`state` failed, `last_error`) and returned, not raised."""
    replay_id = await record(sessions, reactor, mode, selection, actor=actor)
    return await publish(settings, sessions, replay_id, progress=progress)


async def record(
    sessions: async_sessionmaker[AsyncSession],
    reactor: Reactor,
    mode: str,
    selection: ReplaySelection,
    *,
    actor: str,
) -> str:
    """Record a replay and its items (nothing published yet); its id."""
    check_mode(reactor, mode)
    replay_id = str(uuid.uuid4())
    now = utcnow()
    async with sessions() as session, session.begin():
        found = await candidates(session, reactor, selection)
        if not found:
            raise SelectionInvalid(f"no published event in the outbox matches for {reactor.name}")
        session.add(
            EventReplay(
                id=replay_id,
                consumer=reactor.name,
                mode=mode,
                selection=selection.describe(),
                requested_by=actor[:100],
                total=len(found),
                state=PUBLISHING,
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        await session.execute(
            insert(table_of(ReplayItem)),
            [
                {
                    "replay_id": replay_id,
                    "message_id": event.id,
                    "consumer": reactor.name,
                    "subject": event.subject,
                    "event_type": event.event_type,
                    "reapply": mode == ReplayMode.REAPPLY,
                    "created_at": now,
                }
                for event in found
            ],
        )
    log.info(
        "replay %s: %s asked to %s %d event(s) to %s (%s)",
        replay_id,
        actor,
        mode,
        len(found),
        reactor.name,
        selection.describe(),
    )
    return replay_id


async def publish(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    replay_id: str,
    *,
    progress: Progress | None = None,
) -> ReplayStatus:
    """Publish the replay's items not published yet (its first run, or a resume); its status after.
    Raises `ReplayNotFound`."""
    replay = await status(sessions, replay_id)
    queue = Topology.from_settings(settings).queue(replay.reactor)
    publisher = ConfirmedPublisher(settings, f"replay-{replay.reactor}")
    published = replay.published
    error: str | None = None
    try:
        await _set_state(sessions, replay_id, PUBLISHING, None)
        while batch := await _next_chunk(sessions, replay_id):
            sent: list[tuple[str, str, str, str | None, datetime]] = []
            gone: list[str] = []
            try:
                for event_id, event_type, subject, envelope, traceparent in batch:
                    if envelope is None:
                        gone.append(event_id)
                        continue
                    # The ledger's `replayed` row is dated when the copy leaves, not when the chunk is
                    # marked: the reactor may have received it (and said `duplicate ignored`) in between.
                    handed_over = utcnow()
                    await publisher.publish(
                        exchange="",
                        routing_key=queue,
                        body=json.dumps(envelope, separators=(",", ":")).encode(),
                        message_id=event_id,
                        message_type=event_type,
                        content_type=STRUCTURED_CONTENT_TYPE,
                        headers={
                            ReplayHeaders.ID: replay_id,
                            ReplayHeaders.MODE: replay.mode,
                            **({tracing.TRACEPARENT: traceparent} if traceparent else {}),
                        },
                    )
                    sent.append((event_id, event_type, subject, traceparent, handed_over))
            finally:
                await _mark(sessions, replay, sent, gone)
                published += len(sent)
                if progress is not None:
                    progress(published, replay.total)
    except Exception as err:  # the broker or the database went away: recorded, resumable
        error = f"{type(err).__name__}: {err}"
        log.warning("replay %s: publishing stopped after %d event(s): %s", replay_id, published, error)
    finally:
        await publisher.close()
    await _set_state(sessions, replay_id, FAILED if error else PUBLISHED, error)
    return await status(sessions, replay_id)


async def status(sessions: async_sessionmaker[AsyncSession], replay_id: str) -> ReplayStatus:
    """The replay and its counts. Raises `ReplayNotFound`."""
    async with sessions() as session:
        found = await statuses(session, [replay_id])
    if not found:
        raise ReplayNotFound(replay_id)
    return found[0]


async def recent(
    sessions: async_sessionmaker[AsyncSession], *, reactor: str | None = None, limit: int = 20
) -> list[ReplayStatus]:
    """The latest replays (of one reactor, or all), newest first."""
    async with sessions() as session:
        query = select(EventReplay.id).order_by(EventReplay.created_at.desc()).limit(limit)
        if reactor is not None:
            query = query.where(EventReplay.consumer == reactor)
        ids = list(await session.scalars(query))
        found = {replay.id: replay for replay in await statuses(session, ids)}
    return [found[replay_id] for replay_id in ids]


async def statuses(session: AsyncSession, replay_ids: Sequence[str]) -> list[ReplayStatus]:
    if not replay_ids:
        return []
    counts = {
        row.replay_id: row
        for row in (
            await session.execute(
                select(
                    ReplayItem.replay_id,
                    func.count(ReplayItem.published_at).label("published"),
                    func.sum(case((ReplayItem.outcome == ReplayOutcome.APPLIED, 1), else_=0)).label(
                        "applied"
                    ),
                    func.sum(case((ReplayItem.outcome == ReplayOutcome.SKIPPED, 1), else_=0)).label(
                        "skipped"
                    ),
                    func.sum(case((ReplayItem.outcome == ReplayOutcome.MISSING, 1), else_=0)).label(
                        "missing"
                    ),
                )
                .where(ReplayItem.replay_id.in_(replay_ids))
                .group_by(ReplayItem.replay_id)
            )
        ).all()
    }
    replays = await session.scalars(select(EventReplay).where(EventReplay.id.in_(replay_ids)))
    found = []
    for replay in replays:
        count = counts.get(replay.id)
        found.append(
            ReplayStatus(
                id=replay.id,
                reactor=replay.consumer,
                mode=replay.mode,
                selection=replay.selection,
                requested_by=replay.requested_by,
                created_at=replay.created_at,
                updated_at=replay.updated_at,
                total=replay.total,
                published=int(count.published or 0) if count else 0,
                applied=int(count.applied or 0) if count else 0,
                skipped=int(count.skipped or 0) if count else 0,
                missing=int(count.missing or 0) if count else 0,
                state=replay.state,
                last_error=replay.last_error,
            )
        )
    return found


async def _next_chunk(
    sessions: async_sessionmaker[AsyncSession], replay_id: str
) -> list[tuple[str, str, str, dict[str, object] | None, str | None]]:
    """The next items to publish, with their outbox envelope (None: the row is gone)."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                ReplayItem.message_id,
                ReplayItem.event_type,
                ReplayItem.subject,
                OutboxEvent.envelope,
                OutboxEvent.traceparent,
            )
            .outerjoin(OutboxEvent, OutboxEvent.id == ReplayItem.message_id)
            .where(
                ReplayItem.replay_id == replay_id,
                ReplayItem.published_at.is_(None),
                ReplayItem.settled_at.is_(None),
            )
            .order_by(ReplayItem.created_at, ReplayItem.message_id)
            .limit(CHUNK)
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def _mark(
    sessions: async_sessionmaker[AsyncSession],
    replay: ReplayStatus,
    sent: Sequence[tuple[str, str, str, str | None, datetime]],
    gone: Sequence[str],
) -> None:
    """One transaction: the items sent marked published, with a `replayed` ledger row each (dated when it
    was handed to the broker, so before the reactor's rows of that copy); the items whose outbox row is
    gone settled `missing`."""
    if not sent and not gone:
        return
    now = utcnow()
    mode = ReplayMode.label(replay.mode)
    async with sessions() as session, session.begin():
        if sent:
            await session.execute(
                update(ReplayItem)
                .where(ReplayItem.replay_id == replay.id, ReplayItem.message_id.in_([s[0] for s in sent]))
                .values(published_at=now)
            )
            await session.execute(
                insert(table_of(DeliveryRecord)),
                [
                    {
                        "consumer": replay.reactor,
                        "message_id": event_id,
                        "event_type": event_type,
                        "subject": subject,
                        "outcome": DeliveryOutcome.REPLAYED,
                        "attempt": 1,
                        "detail": f"replayed from the outbox ({mode} {replay.id}, by {replay.requested_by})",
                        "created_at": handed_over,
                        "trace_id": tracing.trace_id_of(traceparent),
                    }
                    for event_id, event_type, subject, traceparent, handed_over in sent
                ],
            )
        if gone:
            await session.execute(
                update(ReplayItem)
                .where(ReplayItem.replay_id == replay.id, ReplayItem.message_id.in_(gone))
                .values(outcome=ReplayOutcome.MISSING, settled_at=now)
            )
        await session.execute(update(EventReplay).where(EventReplay.id == replay.id).values(updated_at=now))


async def _set_state(
    sessions: async_sessionmaker[AsyncSession], replay_id: str, state: str, error: str | None
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(EventReplay)
            .where(EventReplay.id == replay_id)
            .values(state=state, last_error=error[:2_000] if error else None, updated_at=utcnow())
        )
