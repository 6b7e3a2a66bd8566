"""Counter upserts that work on PostgreSQL and SQLite alike (both support INSERT ... ON CONFLICT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from infra.models import Base


async def add_to_counters(
    session: AsyncSession,
    model: type[Base],
    key: Mapping[str, Any],
    increments: Mapping[str, int],
    also_set: Mapping[str, Any] | None = None,
) -> None:
    """Insert the row `key` with `increments` as its values, or add `increments` to the existing row."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = model.__table__
    assert isinstance(table, Table)
    statement = insert(table).values({**key, **increments, **(also_set or {})})
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={
            **{column: table.c[column] + statement.excluded[column] for column in increments},
            **{column: statement.excluded[column] for column in also_set or {}},
        },
    )
    await session.execute(statement)
