"""Replayed deliveries in the runtime's transaction: the one place a re-apply passes the inbox.

An operator's replay (`reactors.replay`) publishes outbox events again to one reactor, marked with the
`ReplayHeaders`. A backfill goes through the inbox like any delivery (events applied before are skipped);
this module only records, on the replay's item, whether the event was applied now or skipped. A re-apply
claims the item (its grant) in the transaction of the effects: a claimed event is applied again although its
inbox row is there, after `Reactor.reset` has undone its earlier effects in that same transaction, so there is
no moment where the effects are reset but not re-applied. An item claims once: another copy of the message
(a redelivery, a second publish) finds it settled and is a duplicate. Without the header nothing here runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from infra.models import utcnow
from messaging.headers import ReplayHeaders
from reactors.models import ReplayItem, ReplayMode, ReplayOutcome


@dataclass(frozen=True)
class Replayed:
    """A delivery that is a replay's copy: its event, which replay, which mode."""

    event_id: str
    replay_id: str
    mode: str

    def detail(self, *, applied: bool, reset: bool) -> str:
        """The ledger detail of its outcome row: "replayed" first, for the timeline."""
        mode = ReplayMode.label(self.mode)
        if not applied:
            return f"replayed ({mode} {self.replay_id}): applied before, skipped"
        return f"replayed ({mode} {self.replay_id})" + (": earlier effects reset first" if reset else "")


def replay_of(event_id: str, headers: Mapping[str, object]) -> Replayed | None:
    """The replay a delivery of `event_id` with these headers is a copy of, if any."""
    replay_id, mode = headers.get(ReplayHeaders.ID), headers.get(ReplayHeaders.MODE)
    if isinstance(replay_id, str) and mode in (ReplayMode.BACKFILL, ReplayMode.REAPPLY):
        return Replayed(event_id, replay_id, str(mode))
    return None


async def claim_reapplies(session: AsyncSession, consumer: str, copies: Iterable[Replayed]) -> set[str]:
    """Claim the re-apply grants of these copies; the event ids claimed now (each at most once, ever)."""
    claimed: set[str] = set()
    by_replay: dict[str, set[str]] = {}
    for copy in copies:
        if copy.mode == ReplayMode.REAPPLY:
            by_replay.setdefault(copy.replay_id, set()).add(copy.event_id)
    for replay_id, event_ids in by_replay.items():
        claimed |= set(
            await session.scalars(
                update(ReplayItem)
                .where(
                    ReplayItem.replay_id == replay_id,
                    ReplayItem.consumer == consumer,
                    ReplayItem.message_id.in_(event_ids - claimed),
                    ReplayItem.reapply.is_(True),
                    ReplayItem.settled_at.is_(None),
                )
                .values(outcome=ReplayOutcome.APPLIED, settled_at=utcnow())
                .returning(ReplayItem.message_id)
            )
        )
    return claimed


async def settle_backfills(
    session: AsyncSession, consumer: str, copies: Iterable[Replayed], fresh: set[str]
) -> None:
    """Record on each backfill item whether its event was applied now (`fresh`) or skipped."""
    for copy in copies:
        if copy.mode != ReplayMode.BACKFILL:
            continue
        await session.execute(
            update(ReplayItem)
            .where(
                ReplayItem.replay_id == copy.replay_id,
                ReplayItem.consumer == consumer,
                ReplayItem.message_id == copy.event_id,
                ReplayItem.settled_at.is_(None),
            )
            .values(
                outcome=ReplayOutcome.APPLIED if copy.event_id in fresh else ReplayOutcome.SKIPPED,
                settled_at=utcnow(),
            )
        )
