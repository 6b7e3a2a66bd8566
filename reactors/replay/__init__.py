"""Event replay: published outbox events sent again to ONE reactor, chosen by order, type or time range.

- backfill: through the reactor's inbox (a reactor added later catches up; events it applied are skipped);
- reapply: past its inbox for exactly those events, their earlier effects reset first in the same
  transaction (`Reactor.reset`); refused by a reactor that cannot reset (the notification: a mail cannot
  be unsent).

`selection` chooses and plans (the dry run), `run` records, publishes and reports progress; the runtime's
side is `reactors.runtime.replaying`. The CLI (`order-saga replay`), the HTTP API (`/replays`) and the
console use these functions.
"""

from reactors.replay.run import ReplayStatus, publish, recent, record, start, status
from reactors.replay.selection import (
    REPLAY_LIMIT,
    ReplayError,
    ReplayNotFound,
    ReplayPlan,
    ReplayRefused,
    ReplaySelection,
    SelectionInvalid,
    plan,
)

__all__ = [
    "REPLAY_LIMIT",
    "ReplayError",
    "ReplayNotFound",
    "ReplayPlan",
    "ReplayRefused",
    "ReplaySelection",
    "ReplayStatus",
    "SelectionInvalid",
    "plan",
    "publish",
    "recent",
    "record",
    "start",
    "status",
]
