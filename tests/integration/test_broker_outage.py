"""RabbitMQ stopped while sagas run: they complete, and every event is delivered once it is back.

Stops the shared broker's AMQP side for a few seconds (`rabbitmqctl stop_app`), always restarting it.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import select

from domain.model import OrderStatus
from messaging.models import PENDING, PUBLISHED, OutboxEvent
from orchestrator.client import place_order
from reactors.loyalty.models import LoyaltyLedgerEntry
from reactors.models import InboxMessage
from reactors.notification.smtp_sink import SmtpSink
from tests.conftest import SagaHarness
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.support import add_product, order_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDERS = 3


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120, capture_output=True)


@pytest.fixture
def broker_restorer() -> Iterator[None]:
    try:
        yield
    finally:
        rabbitmqctl("start_app")  # a no-op when it is running
        rabbitmqctl("await_startup")


@pytest.fixture
async def stack(saga: SagaHarness, smtp_sink: SmtpSink, broker_restorer: None) -> AsyncIterator[EventStack]:
    async with event_stack(saga.settings, saga.database, smtp_sink) as events:
        yield events


async def outbox(stack: EventStack) -> list[OutboxEvent]:
    async with stack.database.sessions() as session:
        return list((await session.scalars(select(OutboxEvent))).all())


async def test_sagas_complete_with_the_broker_down_and_events_drain_after(
    saga: SagaHarness, stack: EventStack
) -> None:
    await stack.start_reactors()
    stack.start_relay()
    await add_product(saga.database.sessions, "SKU-A", on_hand=10, unit_price=1_000)

    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        commands = [order_command(items={"SKU-A": 1}, customer_id=f"cust-outage-{n}") for n in range(ORDERS)]
        handles = [
            await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
            for command in commands
        ]
        results = await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), 30)
        assert {result.status for result in results} == {OrderStatus.SHIPPED}

        async def attempted() -> bool:
            rows = await outbox(stack)
            return len(rows) == ORDERS and all(row.attempts >= 1 for row in rows)

        await eventually(attempted, what="the relay tried and recorded the outage")
        rows = await outbox(stack)
        assert {row.status for row in rows} == {PENDING}
        assert all(row.last_error and row.last_error.startswith("broker unavailable") for row in rows)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")

    async def delivered() -> bool:
        return await stack.count(InboxMessage) == 3 * ORDERS  # notification, loyalty, analytics

    await eventually(delivered, within=40, what="every event delivered to every reactor after the restart")
    assert {row.status for row in await outbox(stack)} == {PUBLISHED}
    assert await stack.count(LoyaltyLedgerEntry) == ORDERS
    assert sorted(mail["To"] for mail in stack.sink.messages) == sorted(c.customer_email for c in commands)
