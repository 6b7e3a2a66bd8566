"""Bulk statements that work on PostgreSQL and SQLite alike (both support INSERT ... ON CONFLICT)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from infra.models import Base

# (key columns, increments) of one counter row.
CounterRow = tuple[Mapping[str, Any], Mapping[str, int]]


def dialect_insert(session: AsyncSession) -> Any:
    """The dialect's `insert`, the one with `on_conflict_do_nothing` / `on_conflict_do_update`."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def table_of(model: type[Base]) -> Table:
    """The model's table, for Core statements (bulk inserts without ORM objects)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def sum_counters(rows: Iterable[CounterRow]) -> list[CounterRow]:
    """Rows with the same key merged into one, their increments added, in key order: concurrent batches
    then lock the rows they share in the same order (no deadlock between reactor replicas)."""
    merged: dict[tuple[tuple[str, Any], ...], tuple[Mapping[str, Any], dict[str, int]]] = {}
    for key, increments in rows:
        identity = tuple(sorted(key.items()))
        _, total = merged.setdefault(identity, (key, dict.fromkeys(increments, 0)))
        for column, amount in increments.items():
            total[column] = total.get(column, 0) + amount
    return [merged[identity] for identity in sorted(merged)]


async def add_to_counters(
    session: AsyncSession,
    model: type[Base],
    rows: Iterable[CounterRow],
    also_set: Mapping[str, Any] | None = None,
) -> None:
    """For each (key, increments): insert the row `key` with `increments` as its values, or add `increments`
    to the existing row. One statement; rows of one key are summed first, since a statement may not update
    the same row twice (PostgreSQL refuses it)."""
    merged = sum_counters(rows)
    if not merged:
        return
    table = table_of(model)
    statement = dialect_insert(session)(table)
    key_columns, increment_columns = merged[0]
    statement = statement.on_conflict_do_update(
        index_elements=list(key_columns),
        set_={
            **{column: table.c[column] + statement.excluded[column] for column in increment_columns},
            **{column: statement.excluded[column] for column in also_set or {}},
        },
    )
    # Parameters apart from the statement: its compiled form is cached, and it is sent as one multi-row
    # INSERT where the driver allows (SQLAlchemy's "insertmanyvalues").
    await session.execute(
        statement, [{**key, **increments, **(also_set or {})} for key, increments in merged]
    )
