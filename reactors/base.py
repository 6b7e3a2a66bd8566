"""What a reactor is: a name, the routing keys it wants, and plain handler functions (no transport code).

- `apply(event, session)` makes the reactor's database effects. The runtime calls it inside the transaction
  that also inserts the inbox row, so the effects happen at most once per event id, and (with the broker's
  redelivery) at least once.
- `apply_batch(events, session)` (optional) does the same for several events at once (distinct ids, none
  applied before), in the transaction of their inbox rows; by default `apply` is called for each. If it
  raises, the runtime handles those events one by one through `apply`, so it need not say which one failed.
- `prepare(event, context)` (optional) is for an effect outside the database, such as sending a mail. It runs
  before that transaction, outside it, and must itself be idempotent by event id (see the notification
  reactor for how, and what remains).
- `prepare_batch(events, context)` (optional) prepares several events and returns the error of each event
  it could not prepare, by event id; by default `prepare` is called for each.
- `prepare_skips_applied`: `prepare` recognises the events applied before by itself (the notification's
  claim finds their mails `sent`), so the runtime does not look their inbox rows up before preparing (a
  transaction less per batch).
- `committed(event_ids, context)` (optional) is told, after the transaction of a batch committed, which
  events it settled (applied now, or found applied before): for bookkeeping in memory that `prepare` keeps
  until then (no I/O; it must not raise).

- `reset(events, session)` (optional) undoes the effects `apply` made for these events (all applied
  before), in the transaction that then applies them again: an operator's re-apply (`reactors.replay`)
  after a fix. A reactor without it refuses re-applies (`cannot_reset` says why); a reactor with a
  `prepare` step cannot declare one (an effect outside the database cannot be undone in the transaction).

Raise `PermanentError` for a message no retry can fix (dead-lettered at once); any other exception is taken
as transient and retried after a delay, up to the configured number of attempts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from infra.settings import Settings
from messaging.topology import Subscription


class PermanentError(Exception):
    """The message can never be processed (for example a payload this reactor cannot handle)."""


class TransientError(Exception):
    """The message may succeed later (a downstream outage); the runtime retries it after a delay."""


class Resource(Protocol):
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ReactorContext:
    """What `prepare` may use: the settings, a session factory for its own short transactions, and
    `resources`, where a reactor keeps what outlives one message (an open SMTP connection), closed by the
    runtime when it stops."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    resources: dict[str, Resource] = field(default_factory=dict)

    async def aclose(self) -> None:
        resources = list(self.resources.values())
        self.resources.clear()
        for resource in resources:
            await resource.aclose()


Apply = Callable[[ReceivedEvent, AsyncSession], Awaitable[None]]
ApplyBatch = Callable[[Sequence[ReceivedEvent], AsyncSession], Awaitable[None]]
Prepare = Callable[[ReceivedEvent, ReactorContext], Awaitable[None]]
PrepareBatch = Callable[[Sequence[ReceivedEvent], ReactorContext], Awaitable[dict[str, Exception]]]
Reset = Callable[[Sequence[ReceivedEvent], AsyncSession], Awaitable[None]]
Committed = Callable[[Sequence[str], ReactorContext], None]


@dataclass(frozen=True)
class Reactor:
    name: str
    routing_keys: tuple[str, ...]
    apply: Apply
    prepare: Prepare | None = None
    # Event types (routing keys) this reactor publishes, if any; the event catalog checks they cannot feed
    # back into it (messaging.asyncapi.check_acyclic). None of today's reactors publishes.
    publishes: tuple[str, ...] = ()
    apply_batch: ApplyBatch | None = None
    prepare_batch: PrepareBatch | None = None
    committed: Committed | None = None
    prepare_skips_applied: bool = False
    reset: Reset | None = None
    # Why re-applies are refused when there is no `reset` (shown to the operator).
    cannot_reset: str = "it declares no way to reset its effects"

    def __post_init__(self) -> None:
        if self.reset is not None and self.prepares:
            raise ValueError(f"{self.name}: a reactor with a prepare step cannot declare a reset")

    @property
    def subscription(self) -> Subscription:
        return Subscription(self.name, self.routing_keys)

    @property
    def prepares(self) -> bool:
        return self.prepare is not None or self.prepare_batch is not None

    async def apply_all(self, events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
        if self.apply_batch is not None:
            await self.apply_batch(events, session)
            return
        for event in events:
            await self.apply(event, session)

    async def prepare_all(
        self, events: Sequence[ReceivedEvent], context: ReactorContext
    ) -> dict[str, Exception]:
        if self.prepare_batch is not None:
            return await self.prepare_batch(events, context)
        failed: dict[str, Exception] = {}
        if self.prepare is not None:
            for event in events:
                try:
                    await self.prepare(event, context)
                except Exception as err:
                    failed[event.id] = err
        return failed


def unsupported(reactor: str, event: ReceivedEvent) -> PermanentError:
    return PermanentError(f"{reactor} does not handle {event.type}")
