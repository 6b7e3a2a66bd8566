"""The FastAPI application: `create_app(settings)`; its lifespan opens and closes what it uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.console import install_console
from api.deps import authenticate_caller
from api.edge import EdgeGuard, RateLimiter, needs_api_key
from api.problems import document_edge_refusals, install_problem_handlers, use_problem_media_type
from api.resources import open_resources
from api.routes import analytics, customers, dead_letters, health, observability, orders, products, replays
from api.security import ApiKeyRing
from infra.settings import Settings
from observability import tracing

DESCRIPTION = """
Place orders, follow them through their saga (reserve stock, charge, ship; compensated on failure)
and cancel them while that is still possible.

**Authentication**: `Authorization: Bearer <API key>`. Keys and their scopes come from the settings
(`API_KEYS`, `API_KEY_SCOPES`): `orders:write` places and cancels, `orders:read` follows and lists,
`admin` manages products and stock, reads analytics, recovers dead letters and replays events. The local
stack's development key is `dev-orders-api-key-not-for-production` (all scopes); it is refused when
`ENV=production`.

**Errors** are RFC 9457 problem documents (`application/problem+json`); `errors` locates each invalid
field. **Idempotency**: `POST /orders` needs an `Idempotency-Key` header (IETF draft semantics).
"""

TAGS = [
    {"name": "orders", "description": "Place, follow, list and cancel orders."},
    {"name": "products", "description": "The catalogue and its stock (`admin`)."},
    {"name": "customers", "description": "Loyalty points, kept by a reactor from order events."},
    {"name": "analytics", "description": "Daily sales, kept by a reactor from order events (`admin`)."},
    {
        "name": "dead letters",
        "description": "Each reactor's DLQ by failure group; inspect, redrive (`admin`).",
    },
    {"name": "replays", "description": "Outbox events sent again to one reactor (`admin`)."},
    {"name": "operations", "description": "Liveness and readiness probes, Prometheus metrics."},
    {"name": "events", "description": "The catalog of the order events (AsyncAPI 3.0)."},
]


# Swagger UI must not call out (its validator badge fetches a remote service): docs work air-gapped.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def _openapi_with_problem_media_type(app: FastAPI) -> Callable[[], dict[str, Any]]:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        first_build = app.openapi_schema is None
        schema = build()
        if first_build:
            use_problem_media_type(schema)
            document_edge_refusals(schema)
        return schema

    return openapi


def create_app(settings: Settings) -> FastAPI:
    """The API (routes, problem handlers, the edge guard); opens nothing until its lifespan runs.

    /docs and /redoc load Swagger UI and ReDoc from assets bundled with `fastapi-offline`, served by
    this app under /static-offline-docs: no CDN, so they work offline. Request bodies are capped at
    `API_MAX_BODY_BYTES` (413; see `api.edge` for what is decided before reading).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = FastAPIOffline(
        title="Order saga API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )
    app.openapi = _openapi_with_problem_media_type(app)  # type: ignore[method-assign]
    install_problem_handlers(app)
    routers = [orders.router, products.router, customers.router, analytics.router]
    routers += [dead_letters.router, replays.router]
    routers += [health.router, observability.router]
    for router in routers:
        # The running cap of a body as it is read (a chunked one); a declared length is EdgeGuard's.
        app.include_router(router, max_body_size=settings.api_max_body_bytes)
    # The operator console (/console): its own sign-in and session, so the edge guard does not gate it.
    install_console(app, settings)
    app.add_middleware(
        EdgeGuard,
        key_ring=ApiKeyRing.from_settings(settings),
        # The routers' own routes carry their full paths; the app wraps them when it includes them.
        routes=[(route, needs_api_key(route, authenticate_caller)) for r in routers for route in r.routes],
        limiter=RateLimiter(settings.api_rate_limit) if settings.api_rate_limit else None,
        max_body_bytes=settings.api_max_body_bytes,
    )
    # With tracing on, each request gets a server span: the root of an order placement's trace.
    tracing.instrument_app(app)
    return app
