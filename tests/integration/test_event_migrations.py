"""Migration 0002 (event tables) upgrades and downgrades cleanly, and matches the models (no drift)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from infra.db import create_engine
from tests.support import alembic_config, downgrade, empty_database, migrate

pytestmark = pytest.mark.integration

EVENT_TABLES = {
    "outbox_events",
    "inbox_messages",
    "reactor_deliveries",
    "notifications",
    "loyalty_ledger",
    "loyalty_balances",
    "analytics_daily_sku_sales",
    "analytics_daily_orders",
}


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_event_tables_upgrade_downgrade_and_match_the_models(db_backend: str, tmp_path: Path) -> None:
    async with empty_database(db_backend, tmp_path) as url:
        await migrate(url)
        assert await table_names(url) >= EVENT_TABLES
        # `alembic check`: autogenerate finds nothing to add, drop or alter.
        await asyncio.to_thread(command.check, alembic_config(url))

        await downgrade(url, "0001")
        remaining = await table_names(url)
        assert not EVENT_TABLES & remaining and "orders" in remaining

        await migrate(url)
        assert await table_names(url) >= EVENT_TABLES
