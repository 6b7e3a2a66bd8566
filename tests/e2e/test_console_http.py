"""The console over HTTP (in-process ASGI client, real database and Temporal): sign-in, the session
cookie, refusals without a session or a CSRF token, the pages' content, and no asset from elsewhere."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

import pytest

from tests.e2e.conftest import PRINCIPALS, ApiFactory, ApiHarness, order_body
from tests.e2e.console_client import LOADED_FROM_ELSEWHERE, csrf_of, sign_in

pytestmark = pytest.mark.e2e


async def test_pages_redirect_to_sign_in_and_actions_are_refused_without_a_session(api: ApiHarness) -> None:
    page = await api.http.get("/console/orders?status=SHIPPED")
    assert page.status_code == HTTPStatus.SEE_OTHER
    assert page.headers["location"] == "/console/sign-in?next=%2Fconsole%2Forders%3Fstatus%3DSHIPPED"

    fragment = await api.http.get("/console/health/live", headers={"HX-Request": "true"})
    assert fragment.status_code == HTTPStatus.UNAUTHORIZED
    assert fragment.headers["HX-Redirect"].startswith("/console/sign-in")

    order_id = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"
    action = await api.http.post(f"/console/orders/{order_id}/cancel", data={"csrf_token": "x"})
    assert action.status_code == HTTPStatus.UNAUTHORIZED


async def test_sign_in_needs_a_valid_admin_key_and_sets_a_strict_http_only_cookie(api: ApiHarness) -> None:
    form = await api.http.get("/console/sign-in")
    token = csrf_of(form.text)
    wrong = await api.http.post(
        "/console/sign-in", data={"api_key": "not-a-key-0123456789", "csrf_token": token}
    )
    assert wrong.status_code == HTTPStatus.UNAUTHORIZED and "not valid" in wrong.text
    not_admin = await api.http.post(
        "/console/sign-in", data={"api_key": PRINCIPALS["shop"][0], "csrf_token": token}
    )
    assert not_admin.status_code == HTTPStatus.FORBIDDEN and "admin scope" in not_admin.text
    no_csrf = await api.http.post("/console/sign-in", data={"api_key": PRINCIPALS["ops"][0]})
    assert no_csrf.status_code == HTTPStatus.FORBIDDEN
    assert (await api.http.get("/console/orders")).status_code == HTTPStatus.SEE_OTHER

    signed_in = await sign_in(api.http)
    assert signed_in.status_code == HTTPStatus.SEE_OTHER
    assert signed_in.headers["location"] == "/console/orders"
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "max-age=" in cookie
    assert "secure" not in cookie  # plain http here; https gets Secure
    page = await api.http.get("/console/orders")
    assert page.status_code == HTTPStatus.OK and 'data-testid="operator">ops<' in page.text
    assert page.headers["cache-control"] == "no-store"
    # A new session at sign-in: the anonymous form's token is not the signed-in one.
    assert csrf_of(page.text) != token


async def test_an_open_redirect_after_sign_in_is_not_followed(api: ApiHarness) -> None:
    form = await api.http.get("/console/sign-in?next=//evil.example/")
    assert 'name="next" value="/console/orders"' in form.text


async def test_actions_without_a_valid_csrf_token_are_refused_and_actions_are_audited(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.console.audit")
    async with api_factory() as api:
        await api.add_product("SKU-C", stock=5)
        api.gateway.gate.close()  # hold the saga before the charge: the order can still be cancelled
        order_id = await api.place_ok(order_body({"SKU-C": 1}))
        await api.gateway.gate.reached.wait()
        await sign_in(api.http)
        page = await api.http.get(f"/console/orders/{order_id}")
        assert 'data-testid="cancel"' in page.text
        token = csrf_of(page.text)

        missing = await api.http.post(f"/console/orders/{order_id}/cancel")
        wrong = await api.http.post(f"/console/orders/{order_id}/cancel", headers={"X-CSRF-Token": "forged"})
        assert missing.status_code == wrong.status_code == HTTPStatus.FORBIDDEN
        assert (await api.order(order_id))["status"] == "INVENTORY_RESERVED"

        accepted = await api.http.post(
            f"/console/orders/{order_id}/cancel", headers={"X-CSRF-Token": token, "HX-Request": "true"}
        )
        assert accepted.status_code == HTTPStatus.OK and "Cancel accepted" in accepted.text
        api.gateway.gate.open()
        assert (await api.wait_for(order_id))["status"] == "CANCELLED"
        audited = [r.getMessage() for r in caplog.records if r.name == "api.console.audit"]
        assert "console action sign-in by ops" in audited
        assert f"console action cancel-order by ops (order_id={order_id} accepted=True)" in audited
        assert any("refused: no valid CSRF token (principal ops)" in message for message in audited)

        signed_out = await api.http.post("/console/sign-out", data={"csrf_token": token})
        assert signed_out.status_code == HTTPStatus.SEE_OTHER
        assert (await api.http.get("/console/orders")).status_code == HTTPStatus.SEE_OTHER


async def test_orders_search_order_page_and_health_reference_nothing_elsewhere(api: ApiHarness) -> None:
    await api.add_product("SKU-D", stock=5)
    order_id = await api.place_ok(order_body({"SKU-D": 2}, customer_id="cust-console"))
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"
    await sign_in(api.http)

    listed = await api.http.get(
        "/console/orders", params={"customer_id": "cust-console", "status": "SHIPPED"}
    )
    assert order_id in listed.text
    none = await api.http.get("/console/orders", params={"customer_id": "cust-console", "status": "FAILED"})
    assert order_id not in none.text and "No order matches" in none.text
    found = await api.http.get("/console/orders", params={"order_id": order_id.upper()})
    assert found.status_code == HTTPStatus.SEE_OTHER and found.headers["location"].endswith(order_id)

    page = await api.http.get(f"/console/orders/{order_id}")
    assert page.status_code == HTTPStatus.OK
    for lane in ('data-lane="saga"', 'data-lane="outbox"', 'data-lane="reactor:notification"'):
        assert lane in page.text
    assert 'data-kind="step.completed"' in page.text and "reserve_inventory" in page.text
    assert 'data-testid="cancel"' not in page.text  # shipped: too late
    assert f"/workflows/order-{order_id}" in page.text

    health = await api.http.get("/console/health")
    assert health.status_code == HTTPStatus.OK and 'data-testid="outbox-pending"' in health.text

    for text in (listed.text, page.text, health.text, (await api.http.get("/console/sign-in")).text):
        assert not LOADED_FROM_ELSEWHERE.search(text), LOADED_FROM_ELSEWHERE.search(text)
        for src in re.findall(r'src="([^"]+)"', text):
            assert src.startswith("/console/static/")
            assert (await api.http.get(src)).status_code == HTTPStatus.OK


async def test_health_says_when_the_broker_is_unreachable(api_factory: ApiFactory) -> None:
    async with api_factory(
        rabbitmq_url="amqp://guest:guest@127.0.0.1:1/", broker_call_timeout_seconds=1
    ) as api:
        await sign_in(api.http)
        health = await api.http.get("/console/health/live", headers={"HX-Request": "true"})
        assert health.status_code == HTTPStatus.OK
        assert 'data-testid="broker-error"' in health.text and "unreachable" in health.text


async def test_orders_are_searched_by_placement_time_in_keyset_pages(api: ApiHarness) -> None:
    await api.add_product("SKU-P", stock=10)
    placed = [await api.place_ok(order_body({"SKU-P": 1}, customer_id="cust-pages")) for _ in range(3)]
    await sign_in(api.http)

    first = await api.http.get("/console/orders", params={"customer_id": "cust-pages", "limit": 2})
    assert [order_id in first.text for order_id in placed] == [False, True, True]  # newest first
    next_url = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert next_url is not None
    second = await api.http.get(next_url.group(1).replace("&amp;", "&"))
    assert [order_id in second.text for order_id in placed] == [True, False, False]
    assert 'rel="next"' not in second.text

    later = await api.http.get(
        "/console/orders", params={"customer_id": "cust-pages", "created_from": "2999-01-01T00:00"}
    )
    assert "No order matches" in later.text
    within = await api.http.get(
        "/console/orders",
        params={
            "customer_id": "cust-pages",
            "created_from": "2000-01-01T00:00",
            "created_to": "2999-01-01T00:00",
        },
    )
    assert all(order_id in within.text for order_id in placed)
