"""The API's front door: body size, authentication before the body, rate limits, offline docs.

The bodies here are lazy streams that count what the app pulls from them, so "not read" and "not
buffered" are measured, not assumed (httpx's ASGI transport hands the app a chunk only when it asks).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ApiFactory, ApiHarness, auth, order_body

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
CHUNK = 64 * 1024
FIFTY_MB = 50 * MiB


@dataclass
class CountingBody:
    """`total` bytes of JSON-ish filler in CHUNK-sized pieces; `pulled` counts the bytes handed out."""

    total: int
    pulled: int = 0

    async def stream(self) -> AsyncIterator[bytes]:
        piece = b" " * CHUNK
        sent = 0
        while sent < self.total:
            size = min(CHUNK, self.total - sent)
            self.pulled += size
            sent += size
            yield piece[:size]


def order_headers(principal: str | None, **extra: str) -> dict[str, str]:
    headers = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json", **extra}
    return {**headers, **auth(principal)} if principal else headers


async def test_an_unauthenticated_50_mb_body_is_refused_without_reading_it(api: ApiHarness) -> None:
    for length in ({"Content-Length": str(FIFTY_MB)}, {}):  # declared, and chunked
        for key in ({}, {"Authorization": "Bearer not-a-key-0123456789"}):
            body = CountingBody(FIFTY_MB)
            headers = {**order_headers(None, **length), **key}
            response = await api.http.post("/orders", content=body.stream(), headers=headers)

            assert response.status_code == 401, response.text
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert body.pulled == 0, f"the app read {body.pulled} bytes of an unauthenticated body"


async def test_a_declared_oversized_body_is_413_before_reading(api_factory: ApiFactory) -> None:
    async with api_factory(api_max_body_bytes=MiB) as api:
        body = CountingBody(FIFTY_MB)
        response = await api.http.post(
            "/orders",
            content=body.stream(),
            headers=order_headers("shop", **{"Content-Length": str(FIFTY_MB)}),
        )

    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:order-saga:problem:body-too-large"
    assert body.pulled == 0


async def test_a_chunked_body_is_cut_off_at_the_cap_not_buffered(api_factory: ApiFactory) -> None:
    async with api_factory(api_max_body_bytes=MiB) as api:
        body = CountingBody(FIFTY_MB)
        response = await api.http.post("/orders", content=body.stream(), headers=order_headers("shop"))

    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:order-saga:problem:body-too-large"
    # The app stopped pulling at the first chunk past the cap: at most the cap and one chunk were held.
    assert body.pulled <= MiB + CHUNK, body.pulled


async def test_a_body_within_the_cap_is_served_and_one_past_it_is_not(api_factory: ApiFactory) -> None:
    async with api_factory(api_max_body_bytes=2048) as api:
        await api.add_product("SKU-A", stock=1)
        within = await api.place(order_body({"SKU-A": 1}))
        # The same order, padded with JSON whitespace to one byte past the cap.
        text = json.dumps(order_body({"SKU-A": 1}))
        past = await api.http.post(
            "/orders", content=text + " " * (2049 - len(text)), headers=order_headers("shop")
        )

    assert within.status_code == 202, within.text
    assert past.status_code == 413, past.text
    assert past.json()["type"] == "urn:order-saga:problem:body-too-large"
    assert past.json()["max_body_bytes"] == 2048


async def test_each_api_key_gets_its_own_budget_then_429_with_retry_after(api_factory: ApiFactory) -> None:
    async with api_factory(api_rate_limit="3/minute") as api:
        first = [await api.http.get("/orders", headers=auth("support")) for _ in range(3)]
        throttled = await api.http.get("/orders", headers=auth("support"))
        other = await api.http.get("/products", headers=auth("ops"))
        probe = await api.http.get("/healthz")

    assert [response.status_code for response in first] == [200, 200, 200]
    assert throttled.status_code == 429, throttled.text
    assert throttled.headers["Content-Type"] == "application/problem+json"
    assert throttled.json()["type"] == "urn:order-saga:problem:rate-limited"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    # Another key has a budget of its own; the probes need no key and are not counted.
    assert other.status_code == 200 and probe.status_code == 200


async def test_a_throttled_key_is_refused_before_its_body_is_read(api_factory: ApiFactory) -> None:
    async with api_factory(api_rate_limit="1/minute") as api:
        assert (await api.http.get("/orders", headers=auth("everything"))).status_code == 200
        body = CountingBody(FIFTY_MB)
        response = await api.http.post("/orders", content=body.stream(), headers=order_headers("everything"))

    assert response.status_code == 429, response.text
    assert body.pulled == 0


async def test_without_a_rate_limit_nobody_is_throttled(api: ApiHarness) -> None:
    statuses = {(await api.http.get("/orders", headers=auth("support"))).status_code for _ in range(50)}

    assert statuses == {200}


async def test_the_openapi_document_lists_413_and_429(api: ApiHarness) -> None:
    schema = (await api.http.get("/openapi.json")).json()

    place = schema["paths"]["/orders"]["post"]["responses"]
    assert "application/problem+json" in place["413"]["content"]
    assert "Retry-After" in place["429"]["headers"]
    assert "413" not in schema["paths"]["/orders"]["get"]["responses"]
    assert "429" not in schema["paths"]["/healthz"]["get"]["responses"]


ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
ANY_URL = re.compile(r"""https?://[^\s"'<>)]+""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_everything_from_the_api_itself(api: ApiHarness, page: str) -> None:
    response = await api.http.get(page)
    assert response.status_code == 200
    html = response.text

    # No absolute URL at all: nothing for a browser to fetch from another host (CDN, fonts, validator).
    assert ANY_URL.findall(html) == [], ANY_URL.findall(html)
    assets = ASSET.findall(html)
    assert any(asset.endswith(".js") for asset in assets), assets
    for asset in assets:
        assert not urlsplit(asset).netloc, asset
        served = await api.http.get(asset)
        assert served.status_code == 200, (asset, served.status_code)
        assert len(served.content) > 0
    assert "/openapi.json" in html
