"""Work counters for the benchmark (opt-in): what one process asks of the database (and the SMTP sink of its
clients), written as JSON to WORK_COUNTERS_DIR/<pid>.json.

Off by default: with WORK_COUNTERS_DIR empty, `start_work_counters` returns None and attaches nothing (no
listener, no thread), so the hot path pays nothing. On, it listens to every SQLAlchemy engine of the process
(class-level events, whichever module opens the engine) and counts:

- `db_transactions`: commits and rollbacks of a connection's transaction (each one begun, ended once);
- `db_statements`: statements executed (an executemany counts once);
- `db_round_trips`: requests to PostgreSQL through asyncpg (BEGIN, COMMIT and ROLLBACK, a prepare, a
  prepared statement's execution, a query), each a round trip: asyncpg's request methods are wrapped, at class
  level, when the counters start. A pool pre-ping is three (BEGIN, `;`, ROLLBACK). SQLite has none;
- `db_checkouts`, `db_connects`: pool checkouts and new connections.

Anything else (the SMTP sink's replies) comes from `sources` given at start. A daemon thread rewrites the
file every `DUMP_INTERVAL_SECONDS` (write then rename, so a reader never sees half a file); readers take
differences between two quiet moments.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from infra.settings import Settings

log = logging.getLogger(__name__)

DUMP_INTERVAL_SECONDS = 0.2
CounterSource = Callable[[], Mapping[str, int]]


class WorkCounters:
    """Named integer counts of this process, dumped to `path` by a daemon thread once started."""

    def __init__(
        self, path: Path, component: str, sources: Mapping[str, CounterSource] | None = None
    ) -> None:
        self.path = path
        self.component = component
        self.counts: Counter[str] = Counter()  # increments happen under the GIL; the dump copies
        self._sources = dict(sources or {})
        self._stop = threading.Event()

    def add_sources(self, sources: Mapping[str, CounterSource]) -> None:
        self._sources.update(sources)

    def snapshot(self) -> dict[str, Any]:
        counts = dict(self.counts)
        for source in self._sources.values():
            counts.update(source())
        return {"component": self.component, "pid": os.getpid(), "counts": counts}

    def dump(self) -> None:
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.snapshot()))
        partial.replace(self.path)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dump()
        threading.Thread(target=self._run, name="work-counters", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(DUMP_INTERVAL_SECONDS):
            try:
                self.dump()
            except OSError as err:  # a full disk must not take the process down
                log.warning("cannot write work counters to %s: %s", self.path, err)

    def stop(self) -> None:
        self._stop.set()

    def count_databases(self) -> None:
        """Count the work of every SQLAlchemy engine of this process, present and future."""
        counts = self.counts

        def on_commit(_connection: Any) -> None:
            counts["db_transactions"] += 1

        def on_statement(*_args: Any) -> None:
            counts["db_statements"] += 1

        def on_checkout(*_args: Any) -> None:
            counts["db_checkouts"] += 1

        def on_connect(*_args: Any) -> None:
            counts["db_connects"] += 1

        event.listen(Engine, "commit", on_commit)
        event.listen(Engine, "rollback", on_commit)
        event.listen(Engine, "before_cursor_execute", on_statement)
        event.listen(Pool, "checkout", on_checkout)
        event.listen(Pool, "connect", on_connect)
        _count_asyncpg_requests(counts)


# asyncpg's request methods: each call is one exchange with the server (a prepared statement's execution
# is bind-and-execute in one message batch); a call with arguments on the connection may also prepare first.
_ASYNCPG_REQUESTS = {
    "Connection": ("execute", "executemany", "prepare", "fetch", "fetchval", "fetchrow", "fetchmany"),
    "PreparedStatement": ("explain", "fetch", "fetchval", "fetchrow", "fetchmany", "executemany"),
}


def _count_asyncpg_requests(counts: Counter[str]) -> None:
    """Wrap asyncpg's request methods (class level, once per process) to count round trips."""
    try:
        import asyncpg
        from asyncpg.prepared_stmt import PreparedStatement
    except ImportError:  # no PostgreSQL driver: nothing to count
        return
    for cls in (asyncpg.Connection, PreparedStatement):
        for name in _ASYNCPG_REQUESTS[cls.__name__]:
            # Some are plain functions returning a coroutine (asyncpg's `guarded`): all are awaited.
            if (original := getattr(cls, name, None)) is not None:
                setattr(cls, name, _counted(original, counts))


def _counted(method: Callable[..., Awaitable[Any]], counts: Counter[str]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts["db_round_trips"] += 1
        return await method(*args, **kwargs)

    return counted


@functools.cache
def _started(directory: str, component: str) -> WorkCounters:
    counters = WorkCounters(Path(directory) / f"{os.getpid()}.json", component)
    counters.count_databases()
    counters.start()
    return counters


def start_work_counters(
    settings: Settings, component: str, sources: Mapping[str, CounterSource] | None = None
) -> WorkCounters | None:
    """This process's counters, started once (None when WORK_COUNTERS_DIR is empty: nothing is counted).

    `sources`: further counts to dump beside the database's, read at every dump (cheap, thread-safe)."""
    if not settings.work_counters_dir:
        return None
    counters = _started(settings.work_counters_dir, component)
    counters.add_sources(sources or {})
    return counters
