"""Dead letters and replays over HTTP: an order placed through the API, its events replayed to one reactor,
a dead letter group redriven; admin scope and problem documents (real RabbitMQ, PostgreSQL, Temporal)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from infra.db import Database
from infra.settings import Settings
from reactors.dlq import queue as dlq_queue
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import DeliveryOutcome
from reactors.notification.smtp_sink import SmtpSink
from tests.e2e.conftest import ApiFactory, ApiHarness, auth, order_body
from tests.e2e.console_client import csrf_of, sign_in
from tests.events import shipped_event
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.integration.event_helpers import dead_letter

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    api: ApiHarness
    events: EventStack


@pytest.fixture
async def stack(
    api_factory: ApiFactory, database: tuple[Settings, Database], smtp_sink: SmtpSink
) -> AsyncIterator[Stack]:
    """The API and its saga worker, a relay and the loyalty reactor, on one private broker namespace."""
    settings, db = database
    async with event_stack(settings, db, smtp_sink) as events:
        overrides = {name: getattr(events.settings, name) for name in ("broker_namespace", "smtp_port")}
        async with api_factory(**overrides) as api:
            events.start_relay()
            await events.start_reactor(LOYALTY)
            yield Stack(api, events)


async def shipped_order(stack: Stack) -> str:
    await stack.api.add_product("SKU-R", 10)
    order_id = await stack.api.place_ok(order_body({"SKU-R": 2}, customer_id="cust-replay"))
    assert (await stack.api.wait_for(order_id))["status"] == "SHIPPED"

    async def credited() -> bool:
        return any(row.subject == order_id for row in await stack.events.ledger("loyalty", "processed"))

    await eventually(credited, what="loyalty credited the order")
    return order_id


async def test_an_order_replayed_to_one_reactor_over_http_shows_in_its_timeline(stack: Stack) -> None:
    http = stack.api.http
    order_id = await shipped_order(stack)
    body: dict[str, Any] = {"reactor": "loyalty", "mode": "reapply", "order_ids": [order_id]}

    plan = await http.post("/replays/plan", json=body, headers=auth("ops"))
    assert plan.status_code == 200, plan.text
    assert {k: plan.json()[k] for k in ("total", "would_reset", "would_apply")} == {
        "total": 1,
        "would_reset": 1,
        "would_apply": 1,
    }
    started = await http.post("/replays", json=body, headers=auth("ops"))
    assert started.status_code == 202, started.text
    location = started.headers["Location"]

    async def done() -> bool:
        return bool((await http.get(location, headers=auth("ops"))).json()["done"])

    await eventually(done, what="the replay settled")
    progress = (await http.get(location, headers=auth("ops"))).json()
    assert (progress["applied"], progress["requested_by"]) == (1, "api:ops")
    listed = (await http.get("/replays", params={"reactor": "loyalty"}, headers=auth("ops"))).json()
    assert [item["id"] for item in listed["items"]] == [progress["id"]]

    timeline = (await http.get(f"/orders/{order_id}/timeline", headers=auth("support"))).json()
    kinds = [(entry["actor"], entry["kind"]) for entry in timeline["entries"]]
    assert ("loyalty", "delivery.replayed") in kinds
    assert ("analytics", "delivery.replayed") not in kinds  # one reactor only
    assert any("replayed (re-apply" in (entry.get("detail") or "") for entry in timeline["entries"])
    loyalty = (await http.get("/customers/cust-replay/loyalty", headers=auth("support"))).json()
    assert loyalty["points"] == 20  # reset, then credited again: once

    refused = await http.post("/replays/plan", json={**body, "reactor": "notification"}, headers=auth("ops"))
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:order-saga:problem:replay-refused"
    nothing = await http.post("/replays/plan", json={**body, "order_ids": []}, headers=auth("ops"))
    assert nothing.status_code == 422
    assert (await http.post("/replays", json=body, headers=auth("support"))).status_code == 403


async def test_a_dead_letter_group_redriven_over_http(stack: Stack) -> None:
    http, events = stack.api.http, stack.events
    stuck = [shipped_event(customer_id=f"cust-dlq-{n}") for n in range(2)]
    for event in stuck:
        await dead_letter(events, event, "loyalty", f"TimeoutError: lock timeout on {event.subject}")

    groups = (await http.get("/dead-letters/loyalty/groups", headers=auth("ops"))).json()
    [failure] = groups["groups"]
    assert (failure["count"], failure["signature"]) == (2, "TimeoutError: lock timeout on <id>")
    listed = (
        await http.get("/dead-letters/loyalty", params={"group": failure["id"]}, headers=auth("ops"))
    ).json()
    assert sorted(item["order_id"] for item in listed["items"]) == sorted(e.subject for e in stuck)
    one = await http.get(f"/dead-letters/loyalty/messages/{stuck[0].id}", headers=auth("ops"))
    assert one.json()["payload"]["subject"] == stuck[0].subject

    chosen = {"group": failure["id"]}
    dry = (
        await http.post(
            "/dead-letters/loyalty/redrive", json={**chosen, "dry_run": True}, headers=auth("ops")
        )
    ).json()
    assert (dry["matched"], dry["redriven"]) == (2, [])
    done = (await http.post("/dead-letters/loyalty/redrive", json=chosen, headers=auth("ops"))).json()
    assert sorted(done["redriven"]) == sorted(event.id for event in stuck)

    async def processed() -> bool:
        subjects = {row.subject for row in await events.ledger("loyalty", DeliveryOutcome.PROCESSED)}
        return {event.subject for event in stuck} <= subjects

    await eventually(processed, what="the redriven group processed")
    assert (await http.get("/dead-letters/loyalty", headers=auth("ops"))).json()["total"] == 0

    both = await http.post("/dead-letters/loyalty/redrive", json={**chosen, "all": True}, headers=auth("ops"))
    assert both.status_code == 422
    unknown = await http.get("/dead-letters/nobody", headers=auth("ops"))
    assert (unknown.status_code, unknown.json()["type"]) == (404, "urn:order-saga:problem:reactor-not-found")
    assert (await http.get("/dead-letters/loyalty", headers=auth("support"))).status_code == 403
    assert (await http.get("/dead-letters/loyalty")).status_code == 401


async def test_the_console_recovery_actions_need_a_session_and_its_csrf_token(api: ApiHarness) -> None:
    chosen = {"group": "0123456789ab"}
    assert (await api.http.post("/console/dead-letters/loyalty/redrive", data=chosen)).status_code == 401
    assert (await api.http.get("/console/dead-letters")).status_code == 303  # to the sign-in form
    await sign_in(api.http)
    for path in ("/console/dead-letters/loyalty/confirm", "/console/dead-letters/loyalty/redrive"):
        assert (await api.http.post(path, data=chosen)).status_code == 403
    order_id = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"
    page = await api.http.get("/console/replays", params={"order_id": order_id})
    assert page.status_code == 200 and f">{order_id}</textarea>" in page.text
    replay = {"reactor": "notification", "mode": "reapply", "order_ids": order_id}
    assert (await api.http.post("/console/replays/start", data=replay)).status_code == 403
    refused = await api.http.post("/console/replays/plan", data={**replay, "csrf_token": csrf_of(page.text)})
    assert refused.status_code == 200 and "a mail cannot be unsent" in refused.text


async def test_a_redrive_over_http_takes_what_was_confirmed_and_a_held_dlq_is_busy(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, events = stack.api.http, stack.events
    counted = [shipped_event() for _ in range(3)]
    for event in counted:
        await dead_letter(events, event, "loyalty", f"TimeoutError: lock timeout on {event.subject}")
    [failure] = (await http.get("/dead-letters/loyalty/groups", headers=auth("ops"))).json()["groups"]
    chosen = {"group": failure["id"]}
    dry = (
        await http.post(
            "/dead-letters/loyalty/redrive", json={**chosen, "dry_run": True}, headers=auth("ops")
        )
    ).json()
    assert (dry["matched"], dry["matched_ids"]) == (3, [event.id for event in counted])
    arrived = [shipped_event() for _ in range(2)]  # after the dry run
    for event in arrived:
        await dead_letter(events, event, "loyalty", f"TimeoutError: lock timeout on {event.subject}")

    done = await http.post(
        "/dead-letters/loyalty/redrive",
        json={**chosen, "confirmed_ids": dry["matched_ids"]},
        headers=auth("ops"),
    )
    assert done.status_code == 200, done.text
    result = done.json()
    assert (result["matched"], result["redriven"]) == (5, dry["matched_ids"])
    assert (result["skipped"], result["missing"]) == ([event.id for event in arrived], [])
    left = (await http.get("/dead-letters/loyalty", headers=auth("ops"))).json()
    assert [item["message_id"] for item in left["items"]] == [event.id for event in arrived]

    # Another operator holds the DLQ: a clear 409, never part of the count.
    monkeypatch.setattr(dlq_queue, "BUSY_WAIT_SECONDS", 0.3)
    async with dlq_queue._exclusive(events.database.sessions, "loyalty"):
        busy = await http.get("/dead-letters/loyalty/groups", headers=auth("ops"))
        refused = await http.post(
            "/dead-letters/loyalty/redrive", json={**chosen, "dry_run": True}, headers=auth("ops")
        )
    for answer in (busy, refused):
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:order-saga:problem:dead-letter-queue-busy"
        assert "another operator is reading the dead-letter queue of loyalty" in answer.json()["detail"]


async def test_the_console_redrives_what_was_confirmed_and_says_what_it_left(stack: Stack) -> None:
    http, events = stack.api.http, stack.events
    counted = [shipped_event() for _ in range(3)]
    for event in counted:
        await dead_letter(events, event, "loyalty", f"TimeoutError: lock timeout on {event.subject}")
    await sign_in(http)
    page = await http.get("/console/dead-letters", params={"reactor": "loyalty"})
    [failure] = (await http.get("/dead-letters/loyalty/groups", headers=auth("ops"))).json()["groups"]
    chosen = {"group": failure["id"], "csrf_token": csrf_of(page.text)}
    confirm = await http.post("/console/dead-letters/loyalty/confirm", data=chosen)
    assert 'data-testid="redrive-count">3<' in confirm.text
    confirmed_ids = re.search(r'name="confirmed_ids" value="([^"]*)"', confirm.text)
    assert confirmed_ids is not None and confirmed_ids.group(1).split() == [e.id for e in counted]
    arrived = [shipped_event() for _ in range(2)]  # while the operator reads the confirmation
    for event in arrived:
        await dead_letter(events, event, "loyalty", f"TimeoutError: lock timeout on {event.subject}")

    done = await http.post(
        "/console/dead-letters/loyalty/redrive", data={**chosen, "confirmed_ids": confirmed_ids.group(1)}
    )
    text = " ".join(re.sub(r"<[^>]+>", "", done.text).split())
    assert "Redrove 3 dead letter(s) to loyalty, of the 3 you confirmed" in text
    assert "2 more match now: arrived after the confirmation, left in the dead-letter queue" in text
    left = (await http.get("/dead-letters/loyalty", headers=auth("ops"))).json()
    assert [item["message_id"] for item in left["items"]] == [event.id for event in arrived]
