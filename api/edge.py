"""The API's front door: who is calling, how often, and how much they send, decided before a byte of
the body is read.

FastAPI reads a route's body before it resolves the route's dependencies, so an authentication
dependency alone lets an anonymous client make the process buffer whatever it sends. `EdgeGuard`, an
ASGI middleware in front of the routes, therefore:

1. authenticates the caller of every route that needs an API key (401 problem, body left unread), and
   hands the principal to the route's scope check (`api.deps`);
2. rate-limits each principal (`API_RATE_LIMIT`, the `limits` library, moving window, in this
   process's memory): 429 problem with `Retry-After`, body left unread;
3. refuses a `Content-Length` above `API_MAX_BODY_BYTES` (413 problem, body left unread).

A body without a length (chunked) is capped while it is read by FastAPI's own request-body limit
(`max_body_size`, set on the routers in `api.app`): reading stops at the first chunk past the cap, and
the 413 goes through the app's problem handlers. (FastAPI's limit alone would answer a declared
oversized body in plain text, and would do so in place of the 401 above: hence step 3 here.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from http import HTTPStatus

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import ApiProblem, body_too_large, problem_type, render_problem
from api.security import ApiKeyRing

# Where the middleware leaves the authenticated principal for the route's dependencies.
PRINCIPAL_SCOPE_KEY = "order_saga.principal"


def unauthenticated(*, key_presented: bool) -> ApiProblem:
    """401: no bearer key, or one that is not configured."""
    if not key_presented:
        return ApiProblem(
            HTTPStatus.UNAUTHORIZED,
            "send an API key as `Authorization: Bearer <key>`",
            type_=problem_type("unauthenticated"),
            headers={"WWW-Authenticate": "Bearer"},
        )
    return ApiProblem(
        HTTPStatus.UNAUTHORIZED,
        "the API key is not valid",
        type_=problem_type("unauthenticated"),
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def bearer_key(headers: Headers) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None (absent, or another scheme)."""
    scheme, credentials = get_authorization_scheme_param(headers.get("authorization"))
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


class RateLimiter:
    """Per-principal request budget (`limits` rate strings such as `"50/second;1000/minute"`).

    In-process memory: each API replica keeps its own count, so N replicas allow N times the rate.
    """

    def __init__(self, rate: str) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def retry_after(self, principal: str) -> int | None:
        """Count one request; None if it is within every limit, else the seconds until it would be."""
        for item in self._items:
            if not await self._limiter.hit(item, principal):
                reset_at, _ = await self._limiter.get_window_stats(item, principal)
                return max(1, math.ceil(reset_at - time.time()))
        return None


def rate_limited(seconds: int) -> ApiProblem:
    return ApiProblem(
        HTTPStatus.TOO_MANY_REQUESTS,
        f"too many requests with this API key; retry in {seconds} s",
        type_=problem_type("rate-limited"),
        headers={"Retry-After": str(seconds)},
    )


def _declared_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        # Not a length: the server (uvicorn) refuses such a request before it gets here.
        return 0


def needs_api_key(route: BaseRoute, authenticate: object) -> bool:
    """True for an API route whose dependencies (at any depth) include `authenticate`."""
    if not isinstance(route, APIRoute):
        return False
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.call is authenticate:
            return True
        pending.extend(dependency.dependencies)
    return False


class EdgeGuard:
    """ASGI middleware: authenticate and rate-limit the routes that need an API key, before they read.

    `routes`: the app's routes in the router's order, each with whether it needs an API key.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        key_ring: ApiKeyRing,
        routes: Iterable[tuple[BaseRoute, bool]],
        limiter: RateLimiter | None,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self._key_ring = key_ring
        self._routes = list(routes)
        self._limiter = limiter
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal: ApiProblem | None = None
        if self._is_protected(scope):
            key = bearer_key(headers)
            principal = None if key is None else self._key_ring.authenticate(key)
            if principal is None:
                refusal = unauthenticated(key_presented=key is not None)
            elif self._limiter is not None and (wait := await self._limiter.retry_after(principal.name)):
                refusal = rate_limited(wait)
            else:
                scope[PRINCIPAL_SCOPE_KEY] = principal
        if refusal is None and _declared_length(headers) > self._max_body_bytes:
            refusal = body_too_large(self._max_body_bytes)
        if refusal is not None:
            # Answered without calling `receive`: the body, however large, is never read.
            await render_problem(Request(scope), refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _is_protected(self, scope: Scope) -> bool:
        # The first route that matches fully is the one the router will run; no match is its 404/405.
        for route, protected in self._routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return protected
        return False
