"""The registered reactors. Adding one: write its module (a `Reactor`), then add one line below.

The relay declares the queues of every reactor listed here, the runner (`python -m entrypoints.reactors`)
starts them, and migrations/env.py imports this module so their tables are known to Alembic.
"""

from __future__ import annotations

from reactors.analytics import reactor as analytics
from reactors.base import Reactor
from reactors.loyalty import reactor as loyalty
from reactors.notification import reactor as notification

REACTORS: tuple[Reactor, ...] = (
    notification.REACTOR,
    loyalty.REACTOR,
    analytics.REACTOR,
)


def reactor_named(name: str, reactors: tuple[Reactor, ...] = REACTORS) -> Reactor:
    for reactor in reactors:
        if reactor.name == name:
            return reactor
    known = ", ".join(r.name for r in reactors)
    raise LookupError(f"no reactor named {name!r} (registered: {known})")
