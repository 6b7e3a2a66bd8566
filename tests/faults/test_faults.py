"""The fault-injection harness, bounded for CI, and the checker's own ability to fail on real records.

`pytest -m faults` runs about 60 orders through the real processes (two of each worker, relay and reactor)
while the worker, the reactors, the relay, RabbitMQ, PostgreSQL, the Temporal server and the mail server are
killed, stopped or restarted, then holds the system to its invariants (a few minutes here). Its outages are
shorter than those of `make faults ORDERS=1000` (RabbitMQ 3 s instead of 60, mail 10 s instead of 60).
`test_checker.py` shows every sub-check failing on records broken for it; the test below shows that what
`collect_database` reads from a real database is what the checks see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from contracts.envelope import CloudEvent
from infra import models
from infra.db import Database
from infra.settings import Settings
from messaging.models import PUBLISHED, OutboxEvent
from messaging.outbox import add_to_outbox
from reactors.models import InboxMessage
from tests.events import shipped_event
from tests.faults.harness import FaultPlan, run_faults
from tests.faults.invariants import (
    Expectations,
    PlacedSpec,
    Records,
    collect_database,
    money_conserved,
    outbox_drained,
    reactors_applied_each_event_once,
    stock_conserved,
)
from tests.support import add_product, order_command

CI_ORDERS = 60


@pytest.mark.faults
@pytest.mark.slow
async def test_every_invariant_holds_under_faults(tmp_path: Path) -> None:
    report = await run_faults(FaultPlan.for_orders(CI_ORDERS), tmp_path)
    print(report.render())
    assert report.faults_complete, report.render()
    assert report.quiesced, report.render()
    assert report.ok, report.render() + f"\nlogs: {tmp_path}/logs"


@pytest.fixture
def db_backend() -> str:
    return "postgresql"


@pytest.mark.integration
async def test_the_checker_flags_broken_records(database: tuple[Settings, Database], tmp_path: Path) -> None:
    """Without this, an invariant that cannot fail would pass the harness silently."""
    _, db = database
    await add_product(db.sessions, "SKU-A", on_hand=10)
    order = order_command(items={"SKU-A": 1})
    event: CloudEvent = shipped_event(order_id=order.order_id)
    async with db.sessions() as session, session.begin():
        session.add(
            models.Order(
                id=order.order_id,
                workflow_id="order-" + order.order_id,
                customer_id="cust-1",
                customer_email="cust-1@example.com",
                currency="EUR",
                total_amount=1_250,
                payment_token="tok_ok",
                shipping_address={},
                status="SHIPPED",
                lines=[
                    models.OrderLine(line_no=1, sku="SKU-A", quantity=1, unit_price=1_250, line_total=1_250)
                ],
            )
        )
        # Charged but stock never moved, and the event reached one reactor only.
        session.add(
            models.Payment(
                order_id=order.order_id,
                kind="charge",
                idempotency_key="k",
                amount=1_000,
                currency="EUR",
                status="succeeded",
            )
        )
        await add_to_outbox(session, event)
        session.add(
            InboxMessage(
                consumer="loyalty",
                message_id=event.id,
                event_type=event.type,
                subject=order.order_id,
                processed_at=datetime.now(UTC),
            )
        )
    expect = Expectations(
        outcomes={order.order_id: frozenset({("SHIPPED", None)})},
        initial_stock={"SKU-A": 10},
        placed={order.order_id: PlacedSpec("cust-1", {"SKU-A": 1})},
        prices={"SKU-A": 1_250},
    )

    async def read(queue_depths: dict[str, int]) -> Records:
        records = Records(queue_depths=queue_depths, provider_charges={"k": 1_000}, provider_refunds={})
        async with db.sessions() as session:
            await collect_database(session, records)
        return records

    records = await read({})
    assert not stock_conserved(records, expect).held
    assert "shipped orders charged their total" in money_conserved(records, expect).failed
    assert "inbox" in reactors_applied_each_event_once(records, expect).failed
    assert outbox_drained(records).failed == ("published",)  # the row is still pending
    async with db.sessions() as session, session.begin():
        await session.execute(update(OutboxEvent).values(status=PUBLISHED))
    assert outbox_drained(await read({})).held
    assert outbox_drained(await read({"ns.loyalty": 2})).failed == ("queues empty",)
