"""Recovery for operators, for the REST routes and the console alike: dead letters (`reactors.dlq`) and
event replays (`reactors.replay`), with the refusals of `api.errors` and the replays' own
(`reactors.replay.ReplayError`, mapped by `api.problems`). No HTTP here.

Who asks (`actor`) goes into the ledger rows and the audit log lines the implementations write.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.errors import BrokerUnavailable, DeadLetterNotFound, DeadLetterQueueBusy, ReactorNotFound
from infra.settings import Settings
from messaging.broker import BROKER_UNAVAILABLE
from reactors import dlq, replay
from reactors.base import Reactor
from reactors.dlq import Confirmed, DeadLetterDetail, Redrive, Scan, Selection
from reactors.registry import REACTORS, reactor_named
from reactors.replay import ReplayPlan, ReplaySelection, ReplayStatus

T = TypeVar("T")


class Recovery:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessions = sessions

    @staticmethod
    def reactor(name: str) -> Reactor:
        """The registered reactor `name`. Raises `ReactorNotFound`."""
        try:
            return reactor_named(name)
        except LookupError as err:
            raise ReactorNotFound(name, tuple(r.name for r in REACTORS)) from err

    async def dead_letters(self, reactor: str, selection: Selection = dlq.EVERYTHING) -> Scan:
        """The reactor's dead letters that `selection` matches, oldest first (left in place)."""
        return await _broker(dlq.scan(self._settings, self._sessions, self.reactor(reactor).name, selection))

    async def dead_letter(self, reactor: str, message_id: str) -> DeadLetterDetail:
        """One dead letter with its headers and payload. Raises `DeadLetterNotFound`."""
        found = await _broker(
            dlq.inspect(self._settings, self._sessions, self.reactor(reactor).name, message_id)
        )
        if found is None:
            raise DeadLetterNotFound(reactor, message_id)
        return found

    async def redrive(
        self,
        reactor: str,
        selection: Selection,
        *,
        actor: str,
        dry_run: bool,
        confirmed: Confirmed | None = None,
    ) -> Redrive:
        """Redrive (or count, `dry_run`) the dead letters `selection` matches, to that reactor only; with
        `confirmed`, only what the operator confirmed after the dry run."""
        name = self.reactor(reactor).name
        return await _broker(
            dlq.redrive(
                self._settings,
                self._sessions,
                name,
                selection,
                confirmed=confirmed,
                actor=actor,
                dry_run=dry_run,
            )
        )

    async def plan(self, reactor: str, mode: str, selection: ReplaySelection) -> ReplayPlan:
        """The replay's dry run (counts; nothing recorded)."""
        async with self._sessions() as session:
            return await replay.plan(session, self.reactor(reactor), mode, selection)

    async def record_replay(
        self, reactor: str, mode: str, selection: ReplaySelection, *, actor: str
    ) -> ReplayStatus:
        """Record a replay (publish it with `publish`, in the background: it may take a while)."""
        replay_id = await replay.record(self._sessions, self.reactor(reactor), mode, selection, actor=actor)
        return await replay.status(self._sessions, replay_id)

    async def publish(self, replay_id: str) -> ReplayStatus:
        """Publish what the replay has not published yet (its status says how it went)."""
        return await replay.publish(self._settings, self._sessions, replay_id)

    async def replay(self, replay_id: str) -> ReplayStatus:
        return await replay.status(self._sessions, replay_id)

    async def replays(self, reactor: str | None = None, limit: int = 20) -> list[ReplayStatus]:
        name = self.reactor(reactor).name if reactor else None
        return await replay.recent(self._sessions, reactor=name, limit=limit)


async def _broker(call: Awaitable[T]) -> T:
    try:
        return await call
    except BROKER_UNAVAILABLE as err:
        raise BrokerUnavailable(err) from err
    except dlq.DeadLetterQueueBusy as err:
        raise DeadLetterQueueBusy(err) from err
