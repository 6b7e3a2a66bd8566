"""Dead letters of a reactor: list them, group them by failure, inspect one, redrive a selection back to
that reactor only. `letters` is the pure part (what a dead letter is, its failure group, selections);
`queue` reads and redrives the DLQ on the broker. The CLI (`order-saga dlq`), the HTTP API
(`/dead-letters`) and the console all use these functions.
"""

from reactors.dlq.letters import DeadLetter, DeadLetterDetail, FailureGroup, Selection, group
from reactors.dlq.queue import (
    DEFAULT_LIMIT,
    EVERYTHING,
    SCAN_LIMIT,
    Confirmed,
    DeadLetterQueueBusy,
    Redrive,
    Scan,
    inspect,
    list_dead_letters,
    redrive,
    scan,
)

__all__ = [
    "DEFAULT_LIMIT",
    "EVERYTHING",
    "SCAN_LIMIT",
    "Confirmed",
    "DeadLetter",
    "DeadLetterDetail",
    "DeadLetterQueueBusy",
    "FailureGroup",
    "Redrive",
    "Scan",
    "Selection",
    "group",
    "inspect",
    "list_dead_letters",
    "redrive",
    "scan",
]
