"""The console over HTTP (in-process ASGI client, real database and Temporal): sign-in, the session
cookie, refusals without a session or a CSRF token, the pages' content, and no asset from elsewhere."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from urllib.parse import quote

import pytest
from sqlalchemy import select, update

from api.console.session import COOKIE, SIGN_IN_COOKIE
from infra.models import ConsoleSessionRecord, Order
from tests.e2e.conftest import PRINCIPALS, ApiFactory, ApiHarness, auth, order_body
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
    assert page.status_code == HTTPStatus.OK and 'data-testid="operator">everything<' in page.text
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
        assert "console action sign-in by everything" in audited
        assert f"console action cancel-order by everything (order_id={order_id} accepted=True)" in audited
        assert any("refused: no valid CSRF token (principal everything)" in message for message in audited)

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


async def test_sign_out_revokes_the_session_even_for_a_copied_cookie_and_expiry_is_enforced(
    api: ApiHarness,
) -> None:
    order_id = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"
    await sign_in(api.http)
    page = await api.http.get("/console/health")
    token = csrf_of(page.text)
    copied = api.http.cookies.get(COOKIE)
    assert copied is not None and api.http.cookies.get(SIGN_IN_COOKIE) is None
    # The cookie is an opaque token: no principal, no CSRF token in it; the database stores its digest.
    assert "everything" not in copied and token not in copied
    async with api.database.sessions() as db:
        stored = await db.scalar(
            select(ConsoleSessionRecord.id).where(ConsoleSessionRecord.principal == "everything")
        )
    assert stored is not None and stored != copied

    assert (
        await api.http.post("/console/sign-out", data={"csrf_token": token})
    ).status_code == HTTPStatus.SEE_OTHER
    # Someone who copied the cookie before the sign-out: refused like anybody without a session.
    thief = {"Cookie": f"{COOKIE}={copied}"}
    api.http.cookies.clear()
    refused_page = await api.http.get("/console/orders", headers=thief)
    assert refused_page.status_code == HTTPStatus.SEE_OTHER
    assert refused_page.headers["location"].startswith("/console/sign-in")
    cancel = await api.http.post(
        f"/console/orders/{order_id}/cancel", data={"csrf_token": token}, headers=thief
    )
    assert cancel.status_code == HTTPStatus.UNAUTHORIZED

    # Expiry is the server's: a session past its end is refused whatever the cookie's own max-age.
    await sign_in(api.http)
    live = api.http.cookies.get(COOKIE)
    token = csrf_of((await api.http.get("/console/health")).text)
    async with api.database.sessions.begin() as db:
        await db.execute(
            update(ConsoleSessionRecord)
            .where(ConsoleSessionRecord.revoked_at.is_(None))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    expired = {"Cookie": f"{COOKIE}={live}"}
    api.http.cookies.clear()
    assert (await api.http.get("/console/health", headers=expired)).status_code == HTTPStatus.SEE_OTHER
    cancel = await api.http.post(
        f"/console/orders/{order_id}/cancel", data={"csrf_token": token}, headers=expired
    )
    assert cancel.status_code == HTTPStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    ("fragment", "page"),
    [
        ("/console/health/live", "/console/health"),
        (
            "/console/orders/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10/live",
            "/console/orders/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
        ),
        (
            "/console/replays/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10/live",
            "/console/replays/0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
        ),
    ],
)
async def test_a_fragment_polled_after_the_session_ended_returns_to_its_page_after_sign_in(
    api: ApiHarness, fragment: str, page: str
) -> None:
    expected = f"/console/sign-in?next={quote(page, safe='')}"
    # htmx says which page it is on (with its query); without it, the fragment's page.
    polled = await api.http.get(
        fragment, headers={"HX-Request": "true", "HX-Current-URL": f"{api.http.base_url.join(page)}?tab=1"}
    )
    assert polled.status_code == HTTPStatus.UNAUTHORIZED
    assert polled.headers["HX-Redirect"] == f"/console/sign-in?next={quote(page + '?tab=1', safe='')}"
    elsewhere = await api.http.get(
        fragment, headers={"HX-Request": "true", "HX-Current-URL": "http://evil.example/console/orders"}
    )
    assert elsewhere.headers["HX-Redirect"] == expected
    loaded = await api.http.get(fragment)
    assert loaded.status_code == HTTPStatus.SEE_OTHER and loaded.headers["location"] == expected


async def test_console_reads_and_actions_need_the_scope_their_rest_counterparts_need(
    api_factory: ApiFactory,
) -> None:
    async with api_factory() as api:
        await api.add_product("SKU-S", stock=5)
        api.gateway.gate.close()  # hold the saga before the charge: the order can still be cancelled
        order_id = await api.place_ok(order_body({"SKU-S": 1}))
        await api.gateway.gate.reached.wait()

        # `admin` only: the console's own pages, not the orders (as GET /orders and the cancel refuse it).
        await sign_in(api.http, "ops")
        token = csrf_of((await api.http.get("/console/health")).text)
        for path in ("/console/orders", f"/console/orders/{order_id}", f"/console/orders/{order_id}/live"):
            read = await api.http.get(path)
            assert read.status_code == HTTPStatus.FORBIDDEN and "orders:read" in read.text, path
            assert read.headers["content-type"].startswith("text/html")
        assert (await api.http.get("/orders", headers=auth("ops"))).status_code == HTTPStatus.FORBIDDEN
        cancel = await api.http.post(f"/console/orders/{order_id}/cancel", data={"csrf_token": token})
        assert cancel.status_code == HTTPStatus.FORBIDDEN and "orders:write" in cancel.text
        rest_cancel = await api.http.post(f"/orders/{order_id}/cancel", headers=auth("ops"))
        assert rest_cancel.status_code == HTTPStatus.FORBIDDEN

        # Every scope: the same cancel, without JavaScript, shows its outcome on the order's page once.
        await sign_in(api.http, "everything")
        token = csrf_of((await api.http.get(f"/console/orders/{order_id}")).text)
        done = await api.http.post(f"/console/orders/{order_id}/cancel", data={"csrf_token": token})
        assert done.status_code == HTTPStatus.SEE_OTHER
        shown = await api.http.get(done.headers["location"])
        assert 'data-testid="flash"' in shown.text and "Cancel accepted" in shown.text
        assert 'data-testid="flash"' not in (await api.http.get(done.headers["location"])).text
        api.gateway.gate.open()
        assert (await api.wait_for(order_id))["status"] == "CANCELLED"
        again = await api.http.post(f"/console/orders/{order_id}/cancel", data={"csrf_token": token})
        refused = await api.http.get(again.headers["location"])
        assert "Cancel refused" in refused.text

        # Cancelled: loyalty (bound to order.shipped.v1 only) gets no lane; notification (cancelled) does.
        assert 'data-lane="reactor:loyalty"' not in refused.text
        assert 'data-lane="reactor:notification"' in refused.text


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/console/orders?created_from=garbage", "created_from: not a time"),
        ("/console/orders?created_to=2026-13-01T00:00", "created_to: not a time"),
        ("/console/orders?status=BOGUS", "status"),
        ("/console/orders?customer_id=%3Cscript%3E", "customer_id"),
        ("/console/orders?limit=1000", "limit"),
        ("/console/orders?cursor=%21%21", "cursor"),
        ("/console/orders/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "No such page"),
        ("/console/orders/%3Cscript%3Ealert(1)" + "x" * 60, "order_id"),
        ("/console/dead-letters?since=garbage", "since: not a time"),
        ("/console/no-such-page", "No such page"),
    ],
)
async def test_bad_input_gets_a_console_page_with_a_clear_message_never_raw_json(
    api: ApiHarness, path: str, message: str
) -> None:
    await sign_in(api.http)
    answer = await api.http.get(path)
    assert HTTPStatus.BAD_REQUEST <= answer.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
    assert answer.headers["content-type"].startswith("text/html"), answer.text
    assert 'data-testid="operator"' in answer.text and message in answer.text
    assert "<script>alert" not in answer.text
    # The REST API keeps its problem documents.
    assert (
        (await api.http.get("/orders?limit=1000", headers=auth("support")))
        .headers["content-type"]
        .startswith("application/problem+json")
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"since": "garbage"}, "since: not a time"),
        ({"order_ids": "not-a-uuid"}, "not an order id: &#39;not-a-uuid&#39;"),
        ({"order_ids": "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10", "mode": "sideways"}, "mode"),
    ],
)
async def test_a_replay_dry_run_with_bad_input_says_what_is_wrong(
    api: ApiHarness, fields: dict[str, str], message: str
) -> None:
    await sign_in(api.http)
    token = csrf_of((await api.http.get("/console/replays")).text)
    form = {"csrf_token": token, "reactor": "loyalty", "mode": "backfill", **fields}
    plan = await api.http.post("/console/replays/plan", data=form, headers={"HX-Request": "true"})
    assert plan.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert plan.headers["content-type"].startswith("text/html") and message in plan.text, plan.text


async def test_the_to_time_is_inclusive_to_the_second_and_the_newest_page_is_linked(api: ApiHarness) -> None:
    await api.add_product("SKU-T", stock=10)
    placed = [await api.place_ok(order_body({"SKU-T": 1}, customer_id="cust-bound")) for _ in range(3)]
    await sign_in(api.http)
    async with api.database.sessions() as db:
        created = await db.scalar(select(Order.created_at).where(Order.id == placed[0]))
    assert created is not None
    second = created.astimezone(UTC).replace(microsecond=0, tzinfo=None)
    to = {"customer_id": "cust-bound", "created_from": "2000-01-01T00:00:00"}

    named = await api.http.get("/console/orders", params={**to, "created_to": second.isoformat()})
    assert placed[0] in named.text  # placed within the second the "to" names
    before = await api.http.get(
        "/console/orders", params={**to, "created_to": (second - timedelta(seconds=1)).isoformat()}
    )
    assert placed[0] not in before.text

    first = await api.http.get("/console/orders", params={"customer_id": "cust-bound", "limit": 1})
    assert 'rel="first"' not in first.text  # already the newest
    older_url = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older_url is not None
    older = await api.http.get(older_url.group(1).replace("&amp;", "&"))
    newest_url = re.search(r'href="([^"]+)" rel="first"', older.text)
    assert newest_url is not None
    newest = await api.http.get(newest_url.group(1).replace("&amp;", "&"))
    assert placed[2] in newest.text and placed[1] not in newest.text
