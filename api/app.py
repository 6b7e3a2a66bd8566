"""The FastAPI application: `create_app(settings)`; its lifespan opens and closes what it uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.problems import install_problem_handlers, use_problem_media_type
from api.resources import open_resources
from api.routes import analytics, customers, health, observability, orders, products
from infra.settings import Settings
from observability import tracing

DESCRIPTION = """
Place orders, follow them through their saga (reserve stock, charge, ship; compensated on failure)
and cancel them while that is still possible.

**Authentication**: `Authorization: Bearer <API key>`. Keys and their scopes come from the settings
(`API_KEYS`, `API_KEY_SCOPES`): `orders:write` places and cancels, `orders:read` follows and lists,
`admin` manages products and stock and reads analytics. The local stack's development key is
`dev-orders-api-key-not-for-production` (all scopes); it is refused when `ENV=production`.

**Errors** are RFC 9457 problem documents (`application/problem+json`); `errors` locates each invalid
field. **Idempotency**: `POST /orders` needs an `Idempotency-Key` header (IETF draft semantics).
"""

TAGS = [
    {"name": "orders", "description": "Place, follow, list and cancel orders."},
    {"name": "products", "description": "The catalogue and its stock (`admin`)."},
    {"name": "customers", "description": "Loyalty points, kept by a reactor from order events."},
    {"name": "analytics", "description": "Daily sales, kept by a reactor from order events (`admin`)."},
    {"name": "operations", "description": "Liveness and readiness probes, Prometheus metrics."},
    {"name": "events", "description": "The catalog of the order events (AsyncAPI 3.0)."},
]


class OrderApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        first_build = self.openapi_schema is None
        schema = super().openapi()
        if first_build:
            use_problem_media_type(schema)
        return schema


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = OrderApi(
        title="Order saga API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(orders.router)
    app.include_router(products.router)
    app.include_router(customers.router)
    app.include_router(analytics.router)
    app.include_router(health.router)
    app.include_router(observability.router)
    # With tracing on, each request gets a server span: the root of an order placement's trace.
    tracing.instrument_app(app)
    return app
