"""The API's front door: body size, authentication before the body, rate limits, offline docs.

The bodies here are lazy streams that count what the app pulls from them, so "not read" and "not
buffered" are measured, not assumed (httpx's ASGI transport hands the app a chunk only when it asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from infra.settings import Settings
from tests.e2e.conftest import ApiFactory, ApiHarness, auth, order_body
from tests.support import ROOT, free_port

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


# --- the same over real HTTP, against `python -m entrypoints.api`: what the process holds while refusing

RESET = 0


async def _post_without_waiting(port: int, headers: dict[str, str], *, chunked: bool, send: bool) -> int:
    """POST /orders with a 50 MB body, writing it while reading the answer; stop writing once answered.

    `send=False` writes only the head: an answer then proves the server decided without the body.
    Returns the status, or RESET when the server's close overtook its answer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(FIFTY_MB)}
    head = {"Host": "api", "Connection": "close", **headers, **framing}
    writer.write(
        ("POST /orders HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode()
    )

    async def write_body() -> None:
        piece = b" " * CHUNK
        frame = f"{CHUNK:x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        with contextlib.suppress(ConnectionError):
            for _ in range(FIFTY_MB // CHUNK):
                writer.write(frame)
                await writer.drain()

    writer_task = asyncio.create_task(write_body() if send else asyncio.sleep(0))
    try:
        status_line = await asyncio.wait_for(reader.readline(), 60)
    except (ConnectionError, asyncio.IncompleteReadError):
        # Having answered, the server closes a connection whose body it did not read; the reset this
        # sends a client still writing can overtake the answer. RESET: refused, answer unseen.
        return RESET
    finally:
        writer_task.cancel()
        with contextlib.suppress(BaseException):
            await writer_task
        # The server may reset a connection whose body it did not read: just drop ours.
        writer.transport.abort()
    return int(status_line.split()[1])


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.mark.slow
async def test_the_api_process_does_not_buffer_refused_50_mb_bodies(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, object], tmp_path: Path
) -> None:
    settings, _ = database
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "entrypoints.api",
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": settings.database_url,
            "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
            "API_PORT": str(port),
            "LOG_LEVEL": "WARNING",
        },
        stdout=asyncio.subprocess.DEVNULL,
    )
    key = {"Authorization": f"Bearer {Settings.DEVELOPMENT_API_KEY}"}
    json_headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        before = _peak_rss_mib(server.pid)

        # The case: 8 concurrent unauthenticated 50 MB POSTs (about 820 MiB held before).
        unauthenticated = await asyncio.gather(
            *(_post_without_waiting(port, json_headers, chunked=n % 2 == 0, send=True) for n in range(8))
        )
        # Decided on the head alone: nothing of the body was ever sent.
        head_only = [
            await _post_without_waiting(port, json_headers, chunked=False, send=False),
            await _post_without_waiting(port, {**json_headers, **key}, chunked=False, send=False),
        ]
        # Authenticated, chunked: read up to the cap, then refused.
        capped = await asyncio.gather(
            *(_post_without_waiting(port, {**json_headers, **key}, chunked=True, send=True) for _ in range(4))
        )
        after = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        await server.wait()

    assert set(unauthenticated) <= {401, RESET}, unauthenticated
    assert head_only == [401, 413]
    assert set(capped) <= {413, RESET}, capped
    # A few MiB of socket and parser buffers at most; buffering one refused body alone would be 50.
    assert after - before < 40, f"peak RSS grew from {before:.0f} to {after:.0f} MiB"
