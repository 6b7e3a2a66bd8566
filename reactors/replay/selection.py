"""Which outbox events a replay takes, and what replaying them would do (the dry run).

The source is the outbox: rows the relay has published and the retention has kept (`RETENTION_OUTBOX_DAYS`;
pending rows are still the relay's to send). A replay goes to one reactor: only events whose routing key the
reactor binds are taken. The operator narrows them by order id(s), event type and a time range (when the
event was recorded); at least one criterion, and at most `REPLAY_LIMIT` events.

Errors: `ReplayRefused` (the reactor refuses a re-apply: it cannot reset its effects), `SelectionInvalid`
(no criterion, nothing matches, too many events). Both are `ReplayError`s; their text is for the operator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from messaging.models import PUBLISHED, OutboxEvent
from reactors.base import Reactor
from reactors.models import InboxMessage, ReplayMode

REPLAY_LIMIT = 10_000
_IN_CHUNK = 500  # ids per IN list


class ReplayError(Exception):
    """A replay that cannot be done as asked; `str(err)` says why, for the operator."""


class ReplayRefused(ReplayError):
    """The reactor refuses this mode (a re-apply of a reactor that cannot reset its effects)."""


class SelectionInvalid(ReplayError):
    """No criterion, no matching event, or more than `REPLAY_LIMIT`."""


class ReplayNotFound(ReplayError):
    def __init__(self, replay_id: str) -> None:
        super().__init__(f"there is no replay {replay_id}")


@dataclass(frozen=True)
class ReplaySelection:
    """Outbox events to replay: every criterion given must hold. `since` inclusive, `until` exclusive,
    both on the time the event was recorded in the outbox."""

    order_ids: tuple[str, ...] = ()
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return self == ReplaySelection()

    def describe(self) -> str:
        parts = [
            f"order(s) {', '.join(self.order_ids)}" if self.order_ids else "",
            f"type {self.event_type}" if self.event_type else "",
            f"since {self.since.isoformat()}" if self.since else "",
            f"until {self.until.isoformat()}" if self.until else "",
        ]
        return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class Candidate:
    """An outbox event a replay would publish; `applied_before`: the reactor has an inbox row for it."""

    id: str
    event_type: str
    subject: str
    created_at: datetime
    applied_before: bool


@dataclass(frozen=True)
class ReplayPlan:
    """The dry run: what replaying `selection` to `reactor` in `mode` would do, before anything is done.

    `total` events (`by_type`, over `orders` orders, recorded between `first_at` and `last_at`), of which
    `applied_before` the reactor had applied. A backfill applies the others and skips those; a re-apply
    resets and applies those again and applies the others for the first time.
    """

    reactor: str
    mode: str
    selection: ReplaySelection
    total: int
    applied_before: int
    by_type: dict[str, int]
    orders: int
    first_at: datetime | None
    last_at: datetime | None

    @property
    def would_apply(self) -> int:
        return self.total if self.mode == ReplayMode.REAPPLY else self.total - self.applied_before

    @property
    def would_skip(self) -> int:
        return 0 if self.mode == ReplayMode.REAPPLY else self.applied_before

    @property
    def would_reset(self) -> int:
        return self.applied_before if self.mode == ReplayMode.REAPPLY else 0


def check_mode(reactor: Reactor, mode: str) -> None:
    """Raise `ReplayRefused` unless `reactor` accepts a replay in `mode`."""
    if mode == ReplayMode.BACKFILL:
        return
    if mode != ReplayMode.REAPPLY:
        raise SelectionInvalid(f"unknown replay mode {mode!r} (backfill or reapply)")
    if reactor.reset is None:
        raise ReplayRefused(
            f"{reactor.name} refuses a re-apply: {reactor.cannot_reset} (a backfill is possible: it skips "
            "the events it applied already)"
        )


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more (`order.*.v1` matches `order.shipped.v1`)."""

    def match(p: Sequence[str], k: Sequence[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


async def candidates(session: AsyncSession, reactor: Reactor, selection: ReplaySelection) -> list[Candidate]:
    """The published outbox events `selection` takes for `reactor`, oldest first. Raises
    `SelectionInvalid` without a criterion or beyond `REPLAY_LIMIT` events."""
    if selection.empty:
        raise SelectionInvalid("choose the events: order id(s), an event type or a time range")
    conditions: list[ColumnElement[bool]] = [OutboxEvent.status == PUBLISHED]
    if selection.order_ids:
        conditions.append(OutboxEvent.subject.in_(selection.order_ids))
    if selection.event_type:
        conditions.append(OutboxEvent.event_type == selection.event_type)
    if selection.since:
        conditions.append(OutboxEvent.created_at >= selection.since)
    if selection.until:
        conditions.append(OutboxEvent.created_at < selection.until)
    keys = await session.scalars(select(OutboxEvent.routing_key).where(*conditions).distinct())
    wanted = [key for key in keys if any(topic_matches(p, key) for p in reactor.routing_keys)]
    if not wanted:
        return []
    rows = (
        await session.execute(
            select(OutboxEvent.id, OutboxEvent.event_type, OutboxEvent.subject, OutboxEvent.created_at)
            .where(*conditions, OutboxEvent.routing_key.in_(wanted))
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
            .limit(REPLAY_LIMIT + 1)
        )
    ).all()
    if len(rows) > REPLAY_LIMIT:
        raise SelectionInvalid(f"more than {REPLAY_LIMIT} events match: narrow the selection")
    applied: set[str] = set()
    ids = [row.id for row in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        applied |= set(
            await session.scalars(
                select(InboxMessage.message_id).where(
                    InboxMessage.consumer == reactor.name,
                    InboxMessage.message_id.in_(ids[start : start + _IN_CHUNK]),
                )
            )
        )
    return [Candidate(row.id, row.event_type, row.subject, row.created_at, row.id in applied) for row in rows]


async def plan(session: AsyncSession, reactor: Reactor, mode: str, selection: ReplaySelection) -> ReplayPlan:
    """The dry run (reads only). Raises `ReplayRefused` or `SelectionInvalid` (see the module docstring)."""
    check_mode(reactor, mode)
    found = await candidates(session, reactor, selection)
    return plan_of(reactor.name, mode, selection, found)


def plan_of(reactor: str, mode: str, selection: ReplaySelection, found: Sequence[Candidate]) -> ReplayPlan:
    return ReplayPlan(
        reactor=reactor,
        mode=mode,
        selection=selection,
        total=len(found),
        applied_before=sum(1 for candidate in found if candidate.applied_before),
        by_type=dict(Counter(candidate.event_type for candidate in found)),
        orders=len({candidate.subject for candidate in found}),
        first_at=found[0].created_at if found else None,
        last_at=found[-1].created_at if found else None,
    )
