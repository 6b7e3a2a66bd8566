"""Route dependencies, as `Annotated` aliases: resources, services, the caller and its scopes.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a hop per dependency and
request that costs more than these functions do.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, cast

from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.catalog import Catalog
from api.commands import OrderCommands
from api.edge import PRINCIPAL_SCOPE_KEY, unauthenticated
from api.errors import OrderNotFound
from api.fields import SKU_PATTERN
from api.idempotency import IdempotencyKeys, InvalidKey, parse_key
from api.problems import ApiProblem, problem_type
from api.queries import OrderQueries
from api.recovery import Recovery
from api.resources import Resources
from api.security import Needs, Principal, Scope
from observability.logs import bind_log_context


async def _resources(request: Request) -> Resources:
    return cast(Resources, request.app.state.resources)


ResourcesDep = Annotated[Resources, Depends(_resources)]

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from the service's settings, as `Authorization: Bearer <key>`. Scopes: "
    "`orders:write` (place, cancel), `orders:read` (follow, list, loyalty, notifications), "
    "`admin` (products, stock, analytics).",
)


async def authenticate_caller(
    request: Request,
    resources: ResourcesDep,
    # Declares the scheme in the OpenAPI document; the key itself is read by the edge middleware.
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, as `api.edge.EdgeGuard` authenticated it before the body was read.

    Without the middleware in front (an app assembled differently), the key is checked here.
    """
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(principal, Principal):
        return principal
    if credentials is None:
        raise unauthenticated(key_presented=False)
    principal = resources.key_ring.authenticate(credentials.credentials)
    if principal is None:
        raise unauthenticated(key_presented=True)
    return principal


def _requires(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(authenticate_caller)]) -> Principal:
        if scope not in principal.scopes:
            raise ApiProblem(
                HTTPStatus.FORBIDDEN,
                f"this operation needs the `{scope}` scope",
                type_=problem_type("insufficient-scope"),
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        return principal

    return check


OrderWriter = Annotated[Principal, Depends(_requires(Needs.WRITE_ORDERS))]
OrderReader = Annotated[Principal, Depends(_requires(Needs.READ_ORDERS))]
Admin = Annotated[Principal, Depends(_requires(Needs.OPERATE))]


async def _order_commands(resources: ResourcesDep) -> OrderCommands:
    settings = resources.settings
    keys = IdempotencyKeys(
        resources.database.sessions, timedelta(seconds=settings.api_idempotency_lease_seconds)
    )
    return OrderCommands(
        resources.database.sessions,
        resources.temporal,
        settings.temporal_task_queue,
        keys,
        settings.api_public_url,
    )


async def _order_queries(resources: ResourcesDep) -> OrderQueries:
    return OrderQueries(resources.database.sessions, resources.temporal)


async def _catalog(resources: ResourcesDep) -> Catalog:
    return Catalog(resources.database.sessions)


def _recovery(resources: ResourcesDep) -> Recovery:
    return Recovery(resources.settings, resources.database.sessions)


Commands = Annotated[OrderCommands, Depends(_order_commands)]
Recoveries = Annotated[Recovery, Depends(_recovery)]
Queries = Annotated[OrderQueries, Depends(_order_queries)]
Products = Annotated[Catalog, Depends(_catalog)]


async def _idempotency_key(
    # Read here to answer 400 when it is missing; documented on the route (required, with its pattern).
    header: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> str:
    try:
        return parse_key(header)
    except InvalidKey as err:
        raise ApiProblem(
            HTTPStatus.BAD_REQUEST, str(err), type_=problem_type("idempotency-key-invalid")
        ) from err


IdempotencyKey = Annotated[str, Depends(_idempotency_key)]


async def _order_id(
    order_id: Annotated[
        str,
        Path(
            max_length=64,
            description="The order's id (a UUID), as returned by `POST /orders`.",
            examples=["0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"],
        ),
    ],
) -> str:
    try:
        canonical = str(uuid.UUID(order_id))
    except ValueError as err:
        # Not an id this API hands out, so certainly not a known order.
        raise OrderNotFound(order_id) from err
    # Async, so it runs in the request's own task: the request's log records carry the order id.
    bind_log_context(order_id=canonical)
    return canonical


OrderId = Annotated[str, Depends(_order_id)]
Sku = Annotated[
    str, Path(pattern=SKU_PATTERN, max_length=64, description="The product's SKU.", examples=["SKU-A"])
]
