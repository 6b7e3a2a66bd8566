"""Names of the AMQP headers the reactors' retry and dead-letter bookkeeping uses, defined once.

Two families, not to be confused:

- set by RabbitMQ itself when it dead-letters a message (`BROKER_BOOKKEEPING`: `x-death`, the
  `x-first-death-*` trio, and `x-delivery-count` on quorum queues); copied nowhere, since a message
  republished by the runtime starts its own history;
- set by the reactor runtime (`reactors.runtime.policy`) and read by `reactors.dlq`:
  - `ATTEMPT` (`x-attempt`, int >= 1): on a message coming back from a wait queue, the number of the attempt
    this delivery is (absent on a first delivery, which is attempt 1);
  - `LAST_ERROR` (`x-last-error`, str <= 500 chars): why the previous attempt failed;
  - the `DeadLetterHeaders` on a message in a DLQ: which reactor gave up, why, after how many attempts
    (`x-attempts`, the count of attempts made, unlike `x-attempt` above), when, and the event's type and
    subject; `REDRIVEN` counts how often it was sent back from the DLQ;
  - the `ReplayHeaders` on an event replayed from the outbox to one reactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

ATTEMPT: Final = "x-attempt"
LAST_ERROR: Final = "x-last-error"

# Added by the broker when it dead-letters a message: a list of tables (queue, reason, count, time), the
# most recent death first.
DEATHS: Final = "x-death"
# Every header the broker adds (quorum queues also count redeliveries in x-delivery-count).
BROKER_BOOKKEEPING: Final = frozenset(
    {
        DEATHS,
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
    }
)


class DeadLetterHeaders:
    """Headers of a message the runtime put in a reactor's DLQ (all set together)."""

    REACTOR: Final = "x-reactor"  # the reactor's name
    REASON: Final = "x-dead-letter-reason"  # str, <= 1,000 chars
    ATTEMPTS: Final = "x-attempts"  # int: attempts made before giving up (0 when never parsed)
    AT: Final = "x-dead-lettered-at"  # ISO 8601 UTC time
    EVENT_TYPE: Final = "x-event-type"  # CloudEvents type, "" when unknown
    SUBJECT: Final = "x-subject"  # the order id, "" when unknown
    REDRIVEN: Final = "x-redriven"  # int: times redriven from the DLQ (absent: never)


class ReplayHeaders:
    """Headers of an event an operator's replay published again to one reactor (`reactors.replay`)."""

    ID: Final = "x-replay-id"  # the replay's id (its row in `event_replays`)
    MODE: Final = "x-replay-mode"  # "backfill" or "reapply"


# What a redrive strips before sending a dead letter back: the broker's history and the runtime's verdict.
DEAD_LETTER_BOOKKEEPING: Final = BROKER_BOOKKEEPING | {
    LAST_ERROR,
    DeadLetterHeaders.REASON,
    DeadLetterHeaders.AT,
    DeadLetterHeaders.ATTEMPTS,
}


def without(headers: Mapping[str, object], names: frozenset[str]) -> dict[str, object]:
    """A copy of `headers` without the keys in `names`."""
    return {key: value for key, value in headers.items() if key not in names}
