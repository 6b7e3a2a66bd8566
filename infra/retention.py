"""Bounded tables: delete what is older than its retention, in small batches that never hold the hot path.

What goes, each after its own retention (Settings `RETENTION_*`):
- `outbox_events` rows the relay has published (pending rows stay whatever their age);
- `inbox_messages` rows (the reactors' deduplication; kept at least as long as the outbox rows);
- `reactor_deliveries` rows (the per-delivery ledger the timeline shows), and with the same retention the
  operators' replays (`event_replays`, `event_replay_items`);
- `idempotency_keys` that are finished (`completed`, `retryable`); keys in flight stay;
- `notifications` that were sent, their bodies with them (mails still being sent stay);
- `console_sessions` as soon as they have expired or been revoked (they are useless then).

Orders, their history, payments, shipments and the loyalty and analytics figures are business records and
are never deleted here.

Each batch is one short transaction: `DELETE ... WHERE key IN (SELECT key ... WHERE old LIMIT n)`, on
PostgreSQL with `FOR UPDATE SKIP LOCKED` so a row the hot path holds is skipped, not waited for; on SQLite
each batch takes the write lock for a few milliseconds and a pause between batches lets other writers in.
The tables are named here with SQLAlchemy Core (`table()`), not the ORM models of the layers above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, String, and_, column, delete, or_, select, table, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.expression import TableClause

from infra.db import rowcount
from infra.models import UTCDateTime, utcnow
from infra.settings import Settings

log = logging.getLogger(__name__)

_outbox = table(
    "outbox_events",
    column("id", String),
    column("status", String),
    column("available_at", UTCDateTime()),
    column("published_at", UTCDateTime()),
)
_inbox = table(
    "inbox_messages",
    column("consumer", String),
    column("message_id", String),
    column("processed_at", UTCDateTime()),
)
_deliveries = table("reactor_deliveries", column("id"), column("created_at", UTCDateTime()))
_replays = table("event_replays", column("id", String), column("created_at", UTCDateTime()))
_replay_items = table(
    "event_replay_items",
    column("replay_id", String),
    column("message_id", String),
    column("created_at", UTCDateTime()),
)
_idempotency = table(
    "idempotency_keys",
    column("principal", String),
    column("key", String),
    column("state", String),
    column("updated_at", UTCDateTime()),
)
_notifications = table(
    "notifications", column("event_id", String), column("status", String), column("sent_at", UTCDateTime())
)
_console_sessions = table(
    "console_sessions",
    column("id", String),
    column("expires_at", UTCDateTime()),
    column("revoked_at", UTCDateTime()),
)


@dataclass(frozen=True)
class Rule:
    """One table's retention: rows matching `expired(cutoff)` go, identified by `key`."""

    name: str
    table: TableClause
    key: tuple[str, ...]
    days: Callable[[Settings], float]
    expired: Callable[[datetime], ColumnElement[bool]]
    # Scan in this column's order (an index, or the primary key that grows with time).
    order_by: str


RULES = (
    Rule(
        "outbox",
        _outbox,
        ("id",),
        lambda s: s.retention_outbox_days,
        # available_at is at or before the publish: the (status, available_at) index finds the candidates.
        lambda cutoff: and_(
            _outbox.c.status == "published",
            _outbox.c.available_at < cutoff,
            _outbox.c.published_at < cutoff,
        ),
        "available_at",
    ),
    Rule(
        "inbox",
        _inbox,
        ("consumer", "message_id"),
        lambda s: s.retention_inbox_days,
        lambda cutoff: _inbox.c.processed_at < cutoff,
        "processed_at",
    ),
    Rule(
        "deliveries",
        _deliveries,
        ("id",),
        lambda s: s.retention_deliveries_days,
        lambda cutoff: _deliveries.c.created_at < cutoff,
        "id",
    ),
    # Operators' replays and their items: the audit of the deliveries they caused goes with the ledger.
    Rule(
        "replay_items",
        _replay_items,
        ("replay_id", "message_id"),
        lambda s: s.retention_deliveries_days,
        lambda cutoff: _replay_items.c.created_at < cutoff,
        "created_at",
    ),
    Rule(
        "replays",
        _replays,
        ("id",),
        lambda s: s.retention_deliveries_days,
        lambda cutoff: _replays.c.created_at < cutoff,
        "created_at",
    ),
    Rule(
        "idempotency_keys",
        _idempotency,
        ("principal", "key"),
        lambda s: s.retention_idempotency_days,
        lambda cutoff: and_(
            _idempotency.c.state.in_(("completed", "retryable")), _idempotency.c.updated_at < cutoff
        ),
        "updated_at",
    ),
    Rule(
        "notifications",
        _notifications,
        ("event_id",),
        lambda s: s.retention_notifications_days,
        lambda cutoff: and_(_notifications.c.status == "sent", _notifications.c.sent_at < cutoff),
        "sent_at",
    ),
    # No retention of their own: an expired or revoked session is deleted at the next run.
    Rule(
        "console_sessions",
        _console_sessions,
        ("id",),
        lambda s: 0.0,
        lambda cutoff: or_(_console_sessions.c.expires_at < cutoff, _console_sessions.c.revoked_at < cutoff),
        "expires_at",
    ),
)


@dataclass
class RetentionReport:
    """Rows deleted per table, batches run and the seconds the run took (wall clock)."""

    deleted: dict[str, int]
    batches: int
    seconds: float


async def delete_batch(
    sessions: async_sessionmaker[AsyncSession], rule: Rule, cutoff: datetime, limit: int
) -> int:
    """Delete up to `limit` expired rows of one table in one transaction; the number deleted."""
    keys = [rule.table.c[name] for name in rule.key]
    candidates = (
        select(*keys)
        .where(rule.expired(cutoff))
        .order_by(rule.table.c[rule.order_by])
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no row locks (its lock is the file)
    )
    target = keys[0].in_(candidates) if len(keys) == 1 else tuple_(*keys).in_(candidates)
    async with sessions() as session, session.begin():
        return rowcount(await session.execute(delete(rule.table).where(target)))


async def run_retention(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime | None = None
) -> RetentionReport:
    """Delete every table's expired rows, batch by batch, until none is left; see the module docstring.

    `now`: the reference time (tests); the cutoff of each table is `now - RETENTION_<TABLE>_DAYS`.
    """
    now = now or utcnow()
    started = time.monotonic()
    deleted: dict[str, int] = {}
    batches = 0
    pause = settings.retention_batch_pause_ms / 1000
    for rule in RULES:
        cutoff = now - timedelta(days=rule.days(settings))
        deleted[rule.name] = 0
        while True:
            count = await delete_batch(sessions, rule, cutoff, settings.retention_batch_size)
            batches += 1
            deleted[rule.name] += count
            if count < settings.retention_batch_size:
                break
            await asyncio.sleep(pause)
    report = RetentionReport(deleted, batches, time.monotonic() - started)
    log.info("retention: deleted %s in %d batches, %.2f s", deleted, batches, report.seconds)
    return report
