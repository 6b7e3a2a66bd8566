"""POST /orders and its Idempotency-Key, after the IETF draft: one order and one saga per key."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from temporalio.service import RPCError, RPCStatusCode

from api import commands
from api.commands import to_command
from api.idempotency import request_fingerprint
from api.schemas import PlaceOrderIn
from infra import models
from infra.orders import create_order
from orchestrator import client as orchestrator_client
from tests.e2e.conftest import ApiHarness, Gate, auth, order_body

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


async def order_count(api: ApiHarness) -> int:
    async with api.database.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(models.Order)) or 0)


async def workflow_ids(api: ApiHarness) -> list[str]:
    query = f"TaskQueue = '{api.settings.temporal_task_queue}'"
    return [execution.id async for execution in api.temporal_env.client.list_workflows(query)]


async def wait_for_workflow_ids(api: ApiHarness, expected: list[str]) -> None:
    """Temporal's visibility store is eventually consistent: wait until it lists `expected`."""
    async with asyncio.timeout(10):
        while True:
            if sorted(await workflow_ids(api)) == sorted(expected):
                return
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_same_key_and_body_give_the_same_order_and_one_saga(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})

    first = await api.place(body, key="key-1")
    # The same body in another layout (key order, whitespace) is the same request.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    headers = {**auth("shop"), "Idempotency-Key": '"key-1"', "Content-Type": "application/json"}
    second = await api.http.post("/orders", content=reordered, headers=headers)

    assert first.status_code == second.status_code == 202, (first.text, second.text)
    order_id = first.json()["order_id"]
    assert second.json()["order_id"] == order_id
    assert first.headers["Location"] == second.headers["Location"] == f"/orders/{order_id}"
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"
    assert await order_count(api) == 1
    assert list(api.gateway.charges) == [f"{order_id}:charge"]
    await wait_for_workflow_ids(api, [f"order-{order_id}"])

    third = await api.place(body, key="key-1")
    assert third.json() == {"order_id": order_id, "status": "SHIPPED", "href": f"/orders/{order_id}"}


async def test_same_key_with_another_body_is_refused(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    assert (await api.place(order_body({"SKU-A": 1}), key="key-1")).status_code == 202

    response = await api.place(order_body({"SKU-A": 2}), key="key-1")

    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM
    assert response.json()["type"] == "urn:order-saga:problem:idempotency-key-reused"
    assert await order_count(api) == 1


async def test_keys_belong_to_their_principal(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})

    mine = await api.place(body, key="shared-key", principal="shop")
    theirs = await api.place(body, key="shared-key", principal="other-shop")

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["order_id"] != theirs.json()["order_id"]


async def test_a_missing_or_malformed_key_is_a_bad_request(api: ApiHarness) -> None:
    body = order_body({"SKU-A": 1})
    missing = await api.http.post("/orders", json=body, headers=auth("shop"))
    too_long = await api.place(body, key="k" * 256)
    with_space = await api.place(body, key="two words")

    for response in (missing, too_long, with_space):
        assert response.status_code == 400, response.text
        assert response.headers["Content-Type"] == PROBLEM
        assert response.json()["type"] == "urn:order-saga:problem:idempotency-key-invalid"
    assert "required" in missing.json()["detail"]


async def test_a_key_still_in_flight_is_a_conflict(api: ApiHarness) -> None:
    """Hold the first request inside its order insert with a row lock; the same key meanwhile is 409."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})

    async with api.database.engine.connect() as blocker:
        # Inserting the order's line needs a key-share lock on its product row: FOR UPDATE holds it off.
        await blocker.execute(text("SELECT sku FROM products WHERE sku = 'SKU-A' FOR UPDATE"))
        first = asyncio.create_task(api.place(body, key="slow-key"))
        # Its claim is in the order's transaction, not committed yet: the lock wait shows it is there.
        await wait_until_blocked_on_a_lock(api)

        concurrent = await api.place(body, key="slow-key")

        assert not first.done()
        await blocker.rollback()

    await assert_refused_in_flight_then_replayed(api, body, concurrent, first)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_a_key_in_flight_is_a_conflict_on_every_database(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rule on SQLite (the default database) as on PostgreSQL: hold the first request in flight
    after it recorded its order (the start of its saga waits at a gate), the same key meanwhile is 409."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})
    gate = Gate()
    gate.close()
    start_saga = orchestrator_client.start_saga  # what api.commands imported

    async def held_start(*args: Any, **kwargs: Any) -> Any:
        await gate.pass_through()
        return await start_saga(*args, **kwargs)

    monkeypatch.setattr(commands, "start_saga", held_start)
    first = asyncio.create_task(api.place(body, key="slow-key"))
    try:
        await asyncio.wait_for(gate.reached.wait(), 10)
        await wait_for_key_state(api, "shop", "slow-key", "in_flight")
        concurrent = await api.place(body, key="slow-key")
        assert not first.done()
    finally:
        gate.open()

    await assert_refused_in_flight_then_replayed(api, body, concurrent, first)


async def test_a_retry_after_a_crash_finishes_the_recorded_order(api: ApiHarness) -> None:
    """The request died after recording the order, before starting its saga; the retry starts it."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})
    request = PlaceOrderIn.model_validate(body)
    order_id = str(uuid.uuid4())
    await create_order(api.database.sessions, to_command(order_id, request))
    crashed_at = models.utcnow() - timedelta(seconds=api.settings.api_idempotency_lease_seconds + 1)
    async with api.database.sessions() as session, session.begin():
        session.add(
            models.IdempotencyKey(
                principal="shop",
                key="crashed-key",
                request_hash=request_fingerprint(request),
                order_id=order_id,
                state="in_flight",
                created_at=crashed_at,
                updated_at=crashed_at,
            )
        )

    retry = await api.place(body, key="crashed-key")

    assert retry.status_code == 202, retry.text
    assert retry.json()["order_id"] == order_id
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"
    assert await order_count(api) == 1
    await wait_for_key_state(api, "shop", "crashed-key", "completed")


async def test_an_unknown_sku_is_refused_and_starts_nothing(api: ApiHarness) -> None:
    await api.add_product("SKU-A", stock=10)

    refused = await api.place(order_body({"SKU-A": 1, "SKU-NOPE": 1}), key="key-1")

    assert refused.status_code == 422, refused.text
    assert refused.headers["Content-Type"] == PROBLEM
    problem = refused.json()
    assert problem["type"] == "urn:order-saga:problem:unknown-product"
    assert [(error["pointer"], error["code"]) for error in problem["errors"]] == [
        ("/items/1/sku", "unknown_product")
    ]
    assert await order_count(api) == 0

    # Nothing was recorded, so the key is free for the corrected order, the only saga started.
    corrected = await api.place(order_body({"SKU-A": 1}), key="key-1")
    assert corrected.status_code == 202, corrected.text
    await wait_for_workflow_ids(api, [f"order-{corrected.json()['order_id']}"])


async def wait_for_key_state(api: ApiHarness, principal: str, key: str, state: str) -> None:
    async with asyncio.timeout(10):
        while True:
            async with api.database.sessions() as session:
                row = await session.get(models.IdempotencyKey, (principal, key))
                if row is not None and row.state == state:
                    return
            await asyncio.sleep(0.02)


async def wait_until_blocked_on_a_lock(api: ApiHarness) -> None:
    async with asyncio.timeout(10):
        while True:
            async with api.database.engine.connect() as connection:
                waiting = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            if waiting:
                return
            await asyncio.sleep(0.02)


async def assert_refused_in_flight_then_replayed(
    api: ApiHarness, body: dict[str, Any], concurrent: httpx.Response, first: asyncio.Task[httpx.Response]
) -> None:
    """The request that came while the key was in flight got 409 (retry in 1 s); the first one placed the
    order, and the same key again answers with that same order: one order in all."""
    assert concurrent.status_code == 409, concurrent.text
    assert concurrent.headers["Content-Type"] == PROBLEM
    assert concurrent.headers["Retry-After"] == "1"
    assert concurrent.json()["type"] == "urn:order-saga:problem:idempotency-key-in-flight"
    placed = await first
    assert placed.status_code == 202, placed.text
    again = await api.place(body, key="slow-key")
    assert again.status_code == 202
    assert again.json()["order_id"] == placed.json()["order_id"]
    assert await order_count(api) == 1


class ProcessDied(BaseException):
    """Stands for the API process dying: no handler runs, so nothing after the commit happens."""


def start_failing_once(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, *, after_start: bool = False
) -> list[str]:
    """Make the first start of a saga raise `failure`: before reaching Temporal, or `after_start` (the
    saga started, its answer was lost); later starts are real. Returns the order ids asked for."""
    start_saga = orchestrator_client.start_saga  # what api.commands imported
    asked: list[str] = []

    async def failing_once(client: Any, task_queue: str, order_id: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(order_id)
        if len(asked) == 1:
            if after_start:
                await start_saga(client, task_queue, order_id, *args, **kwargs)
            raise failure
        return await start_saga(client, task_queue, order_id, *args, **kwargs)

    monkeypatch.setattr(commands, "start_saga", failing_once)
    return asked


async def assert_one_order_and_one_saga(api: ApiHarness, order_id: str) -> None:
    assert (await api.wait_for(order_id))["status"] == "SHIPPED"
    assert await order_count(api) == 1
    assert list(api.gateway.charges) == [f"{order_id}:charge"]
    await wait_for_workflow_ids(api, [f"order-{order_id}"])
    await wait_for_key_state(api, "shop", "crash-key", "completed")


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_a_saga_start_that_fails_after_the_commit_is_made_by_the_retry(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order and its key were committed, then Temporal refused the start: 503, and the client's retry
    with the same key starts that order's saga and answers as the first request would have."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})
    asked = start_failing_once(
        monkeypatch, RPCError("simulated: Temporal unreachable", RPCStatusCode.UNAVAILABLE, b"")
    )

    failed = await api.place(body, key="crash-key")
    assert failed.status_code == 503, failed.text
    assert failed.json()["type"] == "urn:order-saga:problem:orchestrator-unavailable"
    [order_id] = asked
    async with api.database.sessions() as session:
        order = await session.get(models.Order, order_id)
    assert order is not None and order.status == "PLACED"
    await wait_for_key_state(api, "shop", "crash-key", "retryable")

    retry = await api.place(body, key="crash-key")

    assert retry.status_code == 202, retry.text
    assert retry.json() == {"order_id": order_id, "status": "PLACED", "href": f"/orders/{order_id}"}
    assert "Idempotent-Replayed" not in retry.headers
    assert asked == [order_id, order_id]
    await assert_one_order_and_one_saga(api, order_id)


@pytest.mark.parametrize(
    ("db_backend", "after_start"),
    [("sqlite", False), ("postgresql", False), ("postgresql", True)],
    ids=["sqlite-before-start", "postgresql-before-start", "postgresql-after-start"],
)
async def test_a_process_that_dies_between_the_commit_and_the_start_is_finished_by_the_retry(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, after_start: bool
) -> None:
    """The API dies after committing the order and its claim, before its saga started (or after, before
    marking the key): the key stays in flight (409 while its lease runs), then the retry starts the
    recorded order's saga, or finds it started (same workflow id), and answers with that order."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})
    asked = start_failing_once(monkeypatch, ProcessDied(), after_start=after_start)

    with pytest.raises(ProcessDied):
        await api.place(body, key="crash-key")
    [order_id] = asked
    await wait_for_key_state(api, "shop", "crash-key", "in_flight")
    assert (await api.place(body, key="crash-key")).status_code == 409
    lease_ago = models.utcnow() - timedelta(seconds=api.settings.api_idempotency_lease_seconds + 1)
    async with api.database.sessions() as session, session.begin():
        key = await session.get(models.IdempotencyKey, ("shop", "crash-key"))
        assert key is not None
        key.updated_at = lease_ago

    retry = await api.place(body, key="crash-key")

    assert retry.status_code == 202, retry.text
    answer = retry.json()
    assert (answer["order_id"], answer["href"]) == (order_id, f"/orders/{order_id}")
    # Before the start nothing moved the order; after it, the saga may have.
    assert answer["status"] == "PLACED" or after_start
    assert asked == [order_id, order_id]
    await assert_one_order_and_one_saga(api, order_id)
    # The saga the retry started knows the order's amount too (the Web UI's summaries show it).
    history = await api.temporal_env.client.get_workflow_handle(f"order-{order_id}").fetch_history()
    [saga] = history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert json.loads(saga.data)["total"] is not None


async def test_a_key_being_taken_over_is_a_conflict_at_once(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a retry takes a key over (it holds the key's row), the same key again is 409, not a wait."""
    await api.add_product("SKU-A", stock=10)
    body = order_body({"SKU-A": 1})
    start_failing_once(monkeypatch, RPCError("simulated", RPCStatusCode.UNAVAILABLE, b""))
    assert (await api.place(body, key="crash-key")).status_code == 503

    async with api.database.engine.connect() as taking_over:
        await taking_over.execute(text("SELECT 1 FROM idempotency_keys WHERE key = 'crash-key' FOR UPDATE"))
        concurrent = await asyncio.wait_for(api.place(body, key="crash-key"), 10)
        await taking_over.rollback()

    assert concurrent.status_code == 409, concurrent.text
    assert concurrent.json()["type"] == "urn:order-saga:problem:idempotency-key-in-flight"
    retry = await api.place(body, key="crash-key")
    assert retry.status_code == 202, retry.text
