"""What a reactor is: a name, the routing keys it wants, and plain handler functions (no transport code).

- `apply(event, session)` makes the reactor's database effects. The runtime calls it inside the transaction
  that also inserts the inbox row, so the effects happen at most once per event id, and (with the broker's
  redelivery) at least once.
- `prepare(event, context)` (optional) is for an effect outside the database, such as sending a mail. It runs
  before that transaction, outside it, and must itself be idempotent by event id (see the notification
  reactor for how, and what remains).

Raise `PermanentError` for a message no retry can fix (dead-lettered at once); any other exception is taken
as transient and retried after a delay, up to the configured number of attempts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from infra.settings import Settings
from messaging.topology import Subscription


class PermanentError(Exception):
    """The message can never be processed (for example a payload this reactor cannot handle)."""


class TransientError(Exception):
    """The message may succeed later (a downstream outage); the runtime retries it after a delay."""


@dataclass(frozen=True)
class ReactorContext:
    """What `prepare` may use: the settings and a session factory for its own short transactions."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]


Apply = Callable[[ReceivedEvent, AsyncSession], Awaitable[None]]
Prepare = Callable[[ReceivedEvent, ReactorContext], Awaitable[None]]


@dataclass(frozen=True)
class Reactor:
    name: str
    routing_keys: tuple[str, ...]
    apply: Apply
    prepare: Prepare | None = None
    # Event types (routing keys) this reactor publishes, if any; the event catalog checks they cannot feed
    # back into it (observability.catalog.check_acyclic). None of today's reactors publishes.
    publishes: tuple[str, ...] = ()

    @property
    def subscription(self) -> Subscription:
        return Subscription(self.name, self.routing_keys)


def unsupported(reactor: str, event: ReceivedEvent) -> PermanentError:
    return PermanentError(f"{reactor} does not handle {event.type}")
