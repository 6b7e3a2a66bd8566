"""Pooled connections the server closed (a database restart; here pg_terminate_backend, which leaves the
shared server up): the next activity and the next POST /orders succeed without a pre-ping.

Two guards (`infra.db`): a checkout refuses a connection asyncpg already knows is closed, and
`transaction` retries once a transaction whose first statement met a dead connection.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.testing import WorkflowEnvironment

from activities.inventory import InventoryActivities
from activities.messages import OrderRef
from api.commands import OrderCommands
from api.idempotency import IdempotencyKeys
from api.schemas import PlaceOrderIn
from api.security import Principal, Scope
from infra.db import Database, discard_closed_connection, transaction
from infra.orders import create_order
from infra.settings import Settings
from tests.support import add_product, order_command

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_backend", ["postgresql"])]


async def terminate_backends(db: Database) -> int:
    """Close, server side, every connection to the test's database but the one asking; how many."""
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(url)
    try:
        terminated = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return int(terminated)


async def backend_pid(conn: AsyncConnection) -> int:
    return int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_an_activity_and_an_order_succeed_after_the_server_closed_the_pool(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]
) -> None:
    _, db = database
    await add_product(db.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 1})
    await create_order(db.sessions, command)
    assert await terminate_backends(db) >= 1  # the pooled connections of the writes above

    outcome = await InventoryActivities(db.sessions).reserve_inventory(OrderRef(command.order_id))

    assert outcome.changed
    assert await terminate_backends(db) >= 1
    commands = OrderCommands(
        db.sessions,
        temporal_env.client,
        "dead-connections-" + uuid.uuid4().hex[:8],  # no worker: the saga is only started
        IdempotencyKeys(db.sessions, timedelta(seconds=30)),
    )
    request = PlaceOrderIn.model_validate(
        {
            "customer": {"id": "cust-1", "email": "cust-1@example.com"},
            "items": [{"sku": "SKU-A", "quantity": 1}],
            "payment_token": "tok_ok",
            "shipping_address": {
                "name": "Ada",
                "line1": "1 Way",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        }
    )
    placed = await commands.place(Principal("shop", frozenset({Scope.ORDERS_WRITE})), "key-1", request)
    assert placed.status == "PLACED" and not placed.replayed


async def test_a_dead_connection_on_the_first_statement_is_replaced_and_the_transaction_run_again(
    database: tuple[Settings, Database],
) -> None:
    """Without the checkout guard, the first statement meets the dead connection: the transaction runs
    once more, on a new connection."""
    _, db = database
    event.remove(db.engine.sync_engine, "checkout", discard_closed_connection)
    first = await transaction(db.engine, backend_pid)
    assert await terminate_backends(db) == 1
    attempts: list[int] = []

    async def work(conn: AsyncConnection) -> int:
        attempts.append(len(attempts) + 1)
        return await backend_pid(conn)

    second = await transaction(db.engine, work)

    assert attempts == [1, 2]
    assert second != first


async def test_a_connection_lost_after_the_first_statement_is_not_run_again(
    database: tuple[Settings, Database],
) -> None:
    """The transaction had started on the server: its outcome is the caller's to handle, not retried."""
    _, db = database
    attempts: list[int] = []

    async def work(conn: AsyncConnection) -> None:
        attempts.append(len(attempts) + 1)
        await backend_pid(conn)
        await terminate_backends(db)
        await backend_pid(conn)

    with pytest.raises(DBAPIError) as raised:
        await transaction(db.engine, work)

    assert raised.value.connection_invalidated
    assert attempts == [1]
    assert await transaction(db.engine, backend_pid)  # the pool recovered
