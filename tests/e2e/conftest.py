"""The HTTP API over an in-process ASGI client, on a real migrated database and the Temporal dev server.

Each test gets its own database and task queue, a worker with gated simulated providers (open unless a
test closes a gate, to hold a saga at a known step) and API keys for every scope.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.providers import (
    ChargeRequest,
    ShipmentReceipt,
    ShipmentRequest,
    SimulatedCarrier,
    SimulatedPaymentGateway,
)
from api.app import create_app
from entrypoints.bootstrap import saga_activities
from infra.db import Database
from infra.settings import Settings, load_settings
from orchestrator.workflow import OrderWorkflow

# principal -> (key, scopes)
PRINCIPALS: dict[str, tuple[str, list[str]]] = {
    "shop": ("shop-key-0123456789abcdef", ["orders:write"]),
    "other-shop": ("other-shop-key-0123456789", ["orders:write"]),
    "support": ("support-key-0123456789ab", ["orders:read"]),
    "ops": ("ops-key-0123456789abcdefgh", ["admin"]),
    "everything": ("everything-key-0123456789", ["orders:read", "orders:write", "admin"]),
}
FINAL_STATUSES = {"SHIPPED", "FAILED", "CANCELLED"}


def auth(principal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {PRINCIPALS[principal][0]}"}


def order_body(
    items: dict[str, int],
    *,
    token: str = "tok_ok",
    country: str = "DE",
    customer_id: str = "cust-1",
) -> dict[str, Any]:
    return {
        "customer": {"id": customer_id, "email": f"{customer_id}@example.com"},
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items.items()],
        "payment_token": token,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Analytical Way",
            "city": "Berlin",
            "postal_code": "10115",
            "country": country,
        },
    }


class Gate:
    """Open by default. Closed, it holds whoever reaches it until reopened; `reached` tells that one did."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reached = asyncio.Event()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def pass_through(self) -> None:
        self.reached.set()
        await self._open.wait()


class GatedPaymentGateway(SimulatedPaymentGateway):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    async def charge(self, request: ChargeRequest) -> str:
        await self.gate.pass_through()
        return await super().charge(request)


class GatedCarrier(SimulatedCarrier):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    async def create_shipment(self, request: ShipmentRequest) -> ShipmentReceipt:
        await self.gate.pass_through()
        return await super().create_shipment(request)


@dataclass
class ApiHarness:
    http: httpx.AsyncClient
    settings: Settings
    database: Database
    temporal_env: WorkflowEnvironment
    gateway: GatedPaymentGateway
    carrier: GatedCarrier

    async def add_product(self, sku: str, stock: int, unit_price: int = 1_000, currency: str = "EUR") -> None:
        response = await self.http.post(
            "/products",
            json={
                "sku": sku,
                "name": f"Product {sku}",
                "unit_price": unit_price,
                "currency": currency,
                "initial_stock": stock,
            },
            headers=auth("ops"),
        )
        assert response.status_code == 201, response.text

    async def place(
        self, body: dict[str, Any], *, key: str | None = None, principal: str = "shop"
    ) -> httpx.Response:
        headers = {**auth(principal), "Idempotency-Key": key or str(uuid.uuid4())}
        return await self.http.post("/orders", json=body, headers=headers)

    async def place_ok(self, body: dict[str, Any]) -> str:
        response = await self.place(body)
        assert response.status_code == 202, response.text
        return str(response.json()["order_id"])

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/orders/{order_id}", headers=auth("support"))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_for(
        self, order_id: str, statuses: set[str] = FINAL_STATUSES, seconds: float = 30.0
    ) -> dict[str, Any]:
        """Poll the order over HTTP until it is in one of `statuses`."""
        async with asyncio.timeout(seconds):
            while True:
                order = await self.order(order_id)
                if order["status"] in statuses:
                    return order
                await asyncio.sleep(0.05)


def api_settings(
    database_url: str, temporal_env: WorkflowEnvironment, task_queue: str, **overrides: Any
) -> Settings:
    return load_settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        temporal_namespace=temporal_env.client.namespace,
        temporal_task_queue=task_queue,
        api_keys={name: key for name, (key, _) in PRINCIPALS.items()},
        api_key_scopes={name: scopes for name, (_, scopes) in PRINCIPALS.items()},
        **overrides,
    )


@pytest.fixture
def db_backend() -> str:
    """The API's tests run on PostgreSQL; a test parametrizes `db_backend` to run on SQLite too."""
    return "postgresql"


ApiFactory = Callable[..., AbstractAsyncContextManager[ApiHarness]]


@pytest.fixture
def api_factory(temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]) -> ApiFactory:
    """Start the app (lifespan included) and a saga worker; keyword arguments override settings."""
    base_settings, db = database

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[ApiHarness]:
        task_queue = "orders-api-" + uuid.uuid4().hex[:8]
        settings = api_settings(base_settings.database_url, temporal_env, task_queue, **overrides)
        gateway, carrier = GatedPaymentGateway(), GatedCarrier()
        worker = Worker(
            temporal_env.client,
            task_queue=task_queue,
            workflows=[OrderWorkflow],
            activities=saga_activities(settings, db.sessions, gateway=gateway, carrier=carrier),
            graceful_shutdown_timeout=timedelta(seconds=5),
        )
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            worker,
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
        ):
            try:
                yield ApiHarness(http, settings, db, temporal_env, gateway, carrier)
            finally:
                # A saga held at a gate must be let through, or the worker cannot stop.
                gateway.gate.open()
                carrier.gate.open()

    return start


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[ApiHarness]:
    async with api_factory() as harness:
        yield harness
