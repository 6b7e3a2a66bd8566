"""Database round trips of one order on the hot path (POST /orders, then each step), counted with
SQLAlchemy's events on PostgreSQL and printed (`pytest -s`). Counts, not times: they are deterministic, so
the test holds them to a budget and a change that adds a round trip to the hot path fails it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.inventory import InventoryActivities
from activities.messages import OrderRef
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.providers import SimulatedCarrier, SimulatedPaymentGateway
from activities.shipping import ShippingActivities
from api.commands import OrderCommands
from api.idempotency import IdempotencyKeys
from api.schemas import PlaceOrderIn
from api.security import Principal, Scope
from infra import models
from infra.db import Database
from infra.settings import Settings
from tests.support import add_product

pytestmark = pytest.mark.integration

# Budgets of the lean hot path (issue 12), one shipped order on PostgreSQL. The ORM version with pre-ping
# cost 29 for the API and 61 for the worker (21 and 49 counting a ping as one round trip).
API_BUDGET = 6
WORKER_BUDGET = 29


@dataclass
class Counts:
    statements: int = 0
    # Transactions that sent a statement: BEGIN and COMMIT (or ROLLBACK) are a round trip each.
    transactions: int = 0
    # Pre-pings on checkout: BEGIN, a query and ROLLBACK each on asyncpg.
    pings: int = 0

    @property
    def round_trips(self) -> int:
        return self.statements + 2 * self.transactions + 3 * self.pings


@dataclass
class RoundTrips:
    """Counts the round trips of an engine's connections from SQLAlchemy's events, per phase."""

    engine: AsyncEngine
    phases: dict[str, Counts] = field(default_factory=dict)
    current: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        sync_engine = self.engine.sync_engine
        event.listen(sync_engine, "begin", self._on_begin)
        event.listen(sync_engine, "before_cursor_execute", self._on_statement)
        dialect: Any = sync_engine.dialect
        ping = dialect.do_ping

        def counted_ping(dbapi_connection: Any) -> bool:
            self.current.pings += 1
            return bool(ping(dbapi_connection))

        dialect.do_ping = counted_ping

    def _on_begin(self, conn: Connection) -> None:
        # asyncpg sends BEGIN with the first statement, and nothing in autocommit.
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        conn.info["round_trips_begin_pending"] = not autocommit

    def _on_statement(self, conn: Connection, *_args: Any) -> None:
        self.current.statements += 1
        if conn.info.pop("round_trips_begin_pending", False):
            self.current.transactions += 1

    def phase(self, name: str) -> Counts:
        self.current = self.phases.setdefault(name, Counts())
        return self.current


async def place_and_ship(
    trips: RoundTrips, db: Database, temporal: WorkflowEnvironment, task_queue: str
) -> str:
    """One order through the API's command path and then each step of the shipped path, in the
    workflow's order, each counted as its own phase. Returns the order id."""
    commands = OrderCommands(
        db.sessions, temporal.client, task_queue, IdempotencyKeys(db.sessions, timedelta(seconds=30))
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
    inventory = InventoryActivities(db.sessions)
    payments = PaymentActivities(db.sessions, SimulatedPaymentGateway())
    shipping = ShippingActivities(db.sessions, SimulatedCarrier())
    orders = OrderActivities(db.sessions)

    trips.phase("POST /orders")
    placed = await commands.place(
        Principal("shop", frozenset({Scope.ORDERS_WRITE})), str(uuid.uuid4()), request
    )
    order = OrderRef(placed.order_id)
    for name, step in [
        ("reserve_inventory", inventory.reserve_inventory),
        ("charge_payment", payments.charge_payment),
        ("create_shipment", shipping.create_shipment),
        ("mark_order_shipped", orders.mark_order_shipped),
    ]:
        trips.phase(name)
        await step(order)
    trips.phase("idle")
    return placed.order_id


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_round_trips_of_one_shipped_order(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]
) -> None:
    _, db = database
    await add_product(db.sessions, "SKU-A", on_hand=10)
    trips = RoundTrips(db.engine)
    task_queue = "round-trips-" + uuid.uuid4().hex[:8]  # no worker: the sagas started here never run
    # A first order warms the connections' prepared-statement caches, which a running service has warm.
    await place_and_ship(trips, db, temporal_env, task_queue)
    trips.phases.clear()

    order_id = await place_and_ship(trips, db, temporal_env, task_queue)

    async with db.sessions() as session:
        assert (
            await session.scalar(select(models.Order.status).where(models.Order.id == order_id)) == "SHIPPED"
        )
    trips.phases.pop("idle")
    worker = [counts for name, counts in trips.phases.items() if name != "POST /orders"]
    print("\nround trips of one shipped order (statements + BEGIN/COMMIT + pre-ping x3):")
    for name, counts in trips.phases.items():
        print(
            f"  {name:20} {counts.round_trips:3}  ({counts.statements} statements,"
            f" {counts.transactions} transactions, {counts.pings} pings)"
        )
    api_trips = trips.phases["POST /orders"].round_trips
    worker_trips = sum(counts.round_trips for counts in worker)
    print(f"  API {api_trips}, worker {worker_trips}, in all {api_trips + worker_trips}")
    assert api_trips <= API_BUDGET
    assert worker_trips <= WORKER_BUDGET
