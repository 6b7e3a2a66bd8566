"""Every dependency of the API's routes runs on the event loop: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per dependency and request."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.routes import analytics, customers, health, observability, orders, products

pytestmark = pytest.mark.unit

ROUTERS = [
    orders.router,
    products.router,
    customers.router,
    analytics.router,
    health.router,
    observability.router,
]


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from dependencies(dependency)


def runs_on_the_loop(call: object) -> bool:
    # A function, or an instance whose __call__ is (fastapi.security's schemes).
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def test_no_route_dependency_is_sent_to_the_thread_pool() -> None:
    routes = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    assert any(route.path == "/orders" and "POST" in (route.methods or ()) for route in routes)

    sync = sorted(
        {
            f"{route.path}: {getattr(dependency.call, '__qualname__', dependency.call)}"
            for route in routes
            for dependency in dependencies(route.dependant)
            if dependency.call is not None and not runs_on_the_loop(dependency.call)
        }
    )

    assert sync == []
