"""API keys and scopes, the probes, the OpenAPI document and the `python -m entrypoints.api` entry point."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from infra.settings import Settings
from tests.e2e.conftest import ApiFactory, ApiHarness, auth, order_body
from tests.support import ROOT, free_port

pytestmark = pytest.mark.e2e

ORDER_ID = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"
PRODUCT = {"sku": "SKU-A", "name": "A", "unit_price": 1, "currency": "EUR"}
# (method, path, JSON body, the one scope it needs)
OPERATIONS = [
    ("POST", "/orders", order_body({"SKU-A": 1}), "orders:write"),
    ("POST", f"/orders/{ORDER_ID}/cancel", None, "orders:write"),
    ("GET", "/orders", None, "orders:read"),
    ("GET", f"/orders/{ORDER_ID}", None, "orders:read"),
    ("POST", "/products", PRODUCT, "admin"),
    ("POST", "/products/SKU-A/stock", {"mode": "add", "quantity": 1}, "admin"),
    ("GET", "/products", None, "admin"),
    ("GET", "/products/SKU-A", None, "admin"),
    ("GET", f"/orders/{ORDER_ID}/notifications", None, "orders:read"),
    ("GET", "/customers/cust-1/loyalty", None, "orders:read"),
    ("GET", "/analytics/sales?date=2026-01-05", None, "admin"),
]
# One principal with exactly each scope (see tests/e2e/conftest.py).
HOLDER = {"orders:write": "shop", "orders:read": "support", "admin": "ops"}


async def call(
    api: ApiHarness, method: str, path: str, body: object, headers: dict[str, str]
) -> httpx.Response:
    headers = {**headers, "Idempotency-Key": "scope-test"}
    return await api.http.request(method, path, json=body, headers=headers)


async def test_every_operation_needs_a_valid_key(api: ApiHarness) -> None:
    for method, path, body, _ in OPERATIONS:
        for headers in (
            {},
            {"Authorization": "Bearer not-a-key-0123456789"},
            {"Authorization": "Basic c2hvcDpzaG9w"},
        ):
            response = await call(api, method, path, body, headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_every_operation_needs_its_scope(api: ApiHarness) -> None:
    for method, path, body, scope in OPERATIONS:
        for held, principal in HOLDER.items():
            response = await call(api, method, path, body, auth(principal))
            if held == scope:
                assert response.status_code not in (401, 403), (method, path, principal, response.text)
            else:
                assert response.status_code == 403, (method, path, principal, response.text)
                assert response.json()["type"] == "urn:order-saga:problem:insufficient-scope"


async def test_probes_need_no_key(api: ApiHarness) -> None:
    live = await api.http.get("/healthz")
    ready = await api.http.get("/readyz")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {name: {"ok": True, "detail": None} for name in ("database", "temporal", "broker")},
    }


async def test_not_ready_while_the_broker_is_unreachable(api_factory: ApiFactory) -> None:
    dead_broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    async with api_factory(rabbitmq_url=dead_broker, api_readiness_timeout_seconds=1.0) as api:
        response = await api.http.get("/readyz")

    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == "not reachable: broker"
    assert problem["checks"]["broker"]["ok"] is False
    assert problem["checks"]["database"]["ok"] is problem["checks"]["temporal"]["ok"] is True


async def test_the_openapi_document_is_served_with_docs(api: ApiHarness) -> None:
    docs = await api.http.get("/docs")
    schema = (await api.http.get("/openapi.json")).json()

    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    assert schema["components"]["schemas"]["PlaceOrderIn"]["examples"]
    place = schema["paths"]["/orders"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in place["parameters"])
    assert "application/problem+json" in place["responses"]["422"]["content"]


@pytest.mark.parametrize(
    ("api_keys", "why"),
    [
        (None, "API_KEYS is empty"),
        (f'{{"local-developer": "{Settings.DEVELOPMENT_API_KEY}"}}', "development API key"),
    ],
)
def test_the_server_will_not_start_in_production_without_keys_of_its_own(
    tmp_path: Path, api_keys: str | None, why: str
) -> None:
    env = {"ENV": "production", "PYTHONPATH": str(ROOT)}
    if api_keys is not None:
        env["API_KEYS"] = api_keys
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.api"],
        cwd=tmp_path,  # away from any developer's .env
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result
    assert "refusing to start" in result.stderr and why in result.stderr
    assert "Order API" not in result.stdout


async def test_python_m_api_serves_and_prints_its_url_and_the_development_key(
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
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        banner = [(await asyncio.wait_for(server.stdout.readline(), 30)).decode() for _ in range(2)]
        url = f"http://127.0.0.1:{port}"
        assert banner[0].startswith(f"Order API: {url}")
        assert Settings.DEVELOPMENT_API_KEY in banner[1]
        async with httpx.AsyncClient(base_url=url) as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        ready = await http.get("/readyz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            products = await http.get(
                "/products", headers={"Authorization": f"Bearer {Settings.DEVELOPMENT_API_KEY}"}
            )
        assert ready.status_code == 200, ready.text
        assert products.status_code == 200, products.text
    finally:
        server.terminate()
        await server.wait()
