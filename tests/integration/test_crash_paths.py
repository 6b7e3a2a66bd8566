"""Crash paths proven on the real processes (`ops.launcher`), killed with SIGKILL.

One stack for the module: the worker runs with a payment provider whose record survives the worker
(`tests.faults.provider_worker`, 4 s per charge, the provider's answer in its second half), and the SMTP sink
can be armed to SIGKILL the notifier right after it accepted a mail (`tests.faults.killing_smtp_sink`).
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from infra import models
from infra.db import Database, open_database
from infra.settings import Settings
from messaging.models import OutboxEvent
from ops.launcher import (
    FAST_DISPATCH_FLAG,
    NAMESPACE_COUNT_FLAG,
    LocalStack,
    StackOptions,
)
from ops.provisioning import empty_database, migrate
from reactors.notification.models import Notification
from tests.faults.invariants import read_provider_journal
from tests.faults.provider_worker import TOKEN_ANSWER_LOST, TOKEN_LATE
from timeline.sources import timeline_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {Settings.DEVELOPMENT_API_KEY}"}
PRICE = 1_250
CHARGE_SECONDS = 4.0


@dataclass
class CrashStack:
    stack: LocalStack
    database: Database
    http: httpx.AsyncClient
    journal: Path
    arm_file: Path

    async def place(self, token: str = "tok_ok", customer: str = "cust-crash") -> str:
        body = {
            "customer": {"id": customer, "email": f"{customer}@example.com"},
            "items": [{"sku": "SKU-A", "quantity": 1}],
            "payment_token": token,
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "1 Analytical Way",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        }
        response = await self.http.post("/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 202, response.text
        return str(response.json()["order_id"])

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/orders/{order_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def payments(self, order_id: str) -> list[tuple[str, int, str]]:
        async with self.database.sessions() as session:
            rows = await session.scalars(
                select(models.Payment).where(models.Payment.order_id == order_id).order_by(models.Payment.id)
            )
            return [(p.kind, p.amount, p.status) for p in rows]

    async def history(self, order_id: str) -> list[str]:
        async with self.database.sessions() as session:
            rows = await session.scalars(
                select(models.OrderStatusChange.status)
                .where(models.OrderStatusChange.order_id == order_id)
                .order_by(models.OrderStatusChange.id)
            )
            return list(rows)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.1)


async def terminal(crash: CrashStack, order_id: str, within: float = 120) -> dict[str, Any]:
    async def done() -> bool:
        return (await crash.order(order_id))["status"] in ("SHIPPED", "CANCELLED", "FAILED")

    await until(done, within, f"order {order_id} terminal")
    return await crash.order(order_id)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def crash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CrashStack]:
    workdir = tmp_path_factory.mktemp("crash-paths")
    journal, arm_file = workdir / "provider.jsonl", workdir / "kill-on-next-mail.pid"
    async with empty_database("postgresql", workdir) as url:
        await migrate(url)
        options = StackOptions(
            workdir=workdir,
            database_url=url,
            log_level="INFO",
            extra_env={
                "SIMULATED_PAYMENT_LATENCY_MS": str(int(CHARGE_SECONDS * 1000)),
                "BROKER_RECONNECT_MAX_SECONDS": "1",
                "REACTOR_RETRY_DELAYS_MS": "[250, 1000, 2000]",
                "NOTIFICATION_SEND_LEASE_SECONDS": "2",
                "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
            },
            server_extra_flags=(*NAMESPACE_COUNT_FLAG, *FAST_DISPATCH_FLAG),
            commands={
                "worker": ("tests.faults.provider_worker", str(journal)),
                "smtp": ("tests.faults.killing_smtp_sink", str(arm_file)),
            },
        )
        stack = LocalStack(options)
        database = open_database(stack.settings)
        try:
            await stack.start()
            async with httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http:
                product = {"sku": "SKU-A", "name": "A", "unit_price": PRICE, "currency": "EUR"}
                (await http.post("/products", json={**product, "initial_stock": 1_000})).raise_for_status()
                yield CrashStack(stack, database, http, journal, arm_file)
            assert stack.crashed() == {}, f"components died on their own; logs in {stack.logs}"
        finally:
            await database.dispose()
            await stack.stop()


async def test_worker_killed_inside_the_provider_call_charges_exactly_once(crash: CrashStack) -> None:
    """The provider charged, its answer was on the way back when the worker died: the next worker's retry
    with the same key gets the same charge; the money moved once. The order's timeline shows the kill."""
    order_id = await crash.place()
    key = f"{order_id}:charge"

    async def provider_charged_db_pending() -> bool:
        charges, _ = read_provider_journal(crash.journal)
        return key in charges and await crash.payments(order_id) == [("charge", PRICE, "pending")]

    await until(provider_charged_db_pending, 60, "the provider charged, the database still pending")
    await crash.stack.kill("worker")
    await crash.stack.start_component("worker")

    order = await terminal(crash, order_id)
    assert order["status"] == "SHIPPED", order
    charges, refunds = read_provider_journal(crash.journal)
    assert charges[key] == PRICE
    assert f"{order_id}:refund" not in refunds
    lines = [json.loads(line) for line in crash.journal.read_text().splitlines()]
    assert sum(1 for line in lines if line["key"] == key) == 1  # one charge at the provider
    assert await crash.payments(order_id) == [("charge", PRICE, "succeeded")]

    # Its timeline: the charge step's first attempt was lost with the worker, the second completed it.
    timeline = await timeline_for(crash.stack.settings, order_id)
    assert timeline is not None
    charge = [entry for entry in timeline.entries if entry.step == "charge_payment"]
    assert any(e.kind.endswith(".completed") and (e.attempt or 0) >= 2 for e in charge), charge
    assert any(e.kind.endswith(".started") and "attempt 1 failed" in (e.detail or "") for e in charge), charge
    assert [e.kind for e in timeline.entries if e.kind.startswith("workflow.")][-1] == "workflow.completed"


async def test_retries_running_out_after_the_provider_charged_fail_the_order_with_a_refund(
    crash: CrashStack,
) -> None:
    """Every attempt's answer is lost although the provider charged on the first: the saga gives up
    (INTERNAL_ERROR), and its refund asks the provider, finds the charge, records it and refunds it."""
    order_id = await crash.place(token=TOKEN_ANSWER_LOST, customer="cust-lost")
    order = await terminal(crash, order_id, within=150)  # 8 attempts, backoff up to 10 s
    assert (order["status"], order["failure"]["reason"]) == ("FAILED", "INTERNAL_ERROR"), order
    assert sorted(await crash.payments(order_id)) == [
        ("charge", PRICE, "succeeded"),
        ("refund", PRICE, "succeeded"),
    ]
    charges, refunds = read_provider_journal(crash.journal)
    assert charges[f"{order_id}:charge"] == PRICE
    assert refunds[f"{order_id}:refund"] == PRICE
    assert await crash.history(order_id) == ["PLACED", "INVENTORY_RESERVED", "COMPENSATING", "FAILED"]


async def test_a_late_charge_on_a_cancelled_order_is_refunded_and_moves_nothing(crash: CrashStack) -> None:
    """The workflow is cancelled while its charge is inside the provider call: the saga compensates (the
    provider has no charge yet: abandoned) and closes CANCELLED. Then the charge lands: recorded and refunded
    on the spot, the order's status and history unchanged."""
    order_id = await crash.place(token=TOKEN_LATE, customer="cust-late")

    async def charging() -> bool:
        return await crash.payments(order_id) == [("charge", PRICE, "pending")]

    await until(charging, 60, "the charge inside the provider call")
    await crash.stack.temporal.get_workflow_handle(f"order-{order_id}").cancel()
    order = await terminal(crash, order_id)
    assert order["status"] == "CANCELLED", order
    closed_history = await crash.history(order_id)
    assert closed_history[-1] == "CANCELLED"

    async def refunded_at_the_provider() -> bool:
        _, refunds = read_provider_journal(crash.journal)
        return f"{order_id}:refund" in refunds

    await until(refunded_at_the_provider, 60, "the late charge refunded")
    charges, refunds = read_provider_journal(crash.journal)
    assert charges[f"{order_id}:charge"] == refunds[f"{order_id}:refund"] == PRICE

    async def settled() -> bool:
        return sorted(await crash.payments(order_id)) == [
            ("charge", PRICE, "succeeded"),
            ("refund", PRICE, "succeeded"),
        ]

    await until(settled, 30, "the database records the late charge and its refund")
    assert (await crash.order(order_id))["status"] == "CANCELLED"
    assert await crash.history(order_id) == closed_history


async def test_notifier_killed_right_after_smtp_accepted_resends_at_most_once_with_the_same_message_id(
    crash: CrashStack,
) -> None:
    notifier = crash.stack.components["reactor-notification"]
    armed = crash.arm_file.with_suffix(".tmp")
    armed.write_text(str(notifier.pid))
    armed.rename(crash.arm_file)  # atomically: the sink reads it whole
    order_id = await crash.place(customer="cust-mail")
    await terminal(crash, order_id)

    async def notifier_died() -> bool:
        return not notifier.running

    await until(notifier_died, 60, "the sink killed the notifier after accepting the mail")
    notifier.expect_exit()  # killed on purpose, by the armed sink
    await crash.stack.start_component("reactor-notification")

    async with crash.database.sessions() as session:
        event_id = await session.scalar(select(OutboxEvent.id).where(OutboxEvent.subject == order_id))
    assert event_id is not None

    async def sent() -> bool:
        async with crash.database.sessions() as session:
            row = await session.get(Notification, event_id)
            return row is not None and row.status == "sent"

    await until(sent, 60, "the notification marked sent by the restarted notifier")
    copies = Counter(
        str(message["Message-ID"])
        for message in mailbox.Maildir(crash.stack.maildir, create=False)
        if str(message["Message-ID"]).startswith(f"<{event_id}@")
    )
    assert copies == {f"<{event_id}@order-saga>": 2}  # the accepted mail, and the documented resend
