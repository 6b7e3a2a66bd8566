"""Pure rules of the event side: queue names and retry tiers, points, the rendering of notifications."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.envelope import ReceivedEvent, new_event
from contracts.orders import ORDER_CANCELLED_V1
from messaging.topology import Topology
from reactors.loyalty.reactor import points_for
from reactors.notification.reactor import message_id_for, render
from tests.events import cancelled_payload

pytestmark = pytest.mark.unit


def test_topology_names_and_retry_tiers() -> None:
    topology = Topology(namespace="orders", retry_delays_ms=(1_000, 5_000), delivery_limit=20)
    assert topology.exchange == "orders.events"
    assert topology.queue("loyalty") == "orders.loyalty"
    assert topology.dead_letter_queue("loyalty") == "orders.loyalty.dlq"
    assert [topology.retry_queue_for("loyalty", attempt) for attempt in (1, 2, 3, 9)] == [
        "orders.loyalty.wait.1000ms",
        "orders.loyalty.wait.5000ms",
        "orders.loyalty.wait.5000ms",
        "orders.loyalty.wait.5000ms",
    ]
    assert topology.queues_of("loyalty") == [
        "orders.loyalty",
        "orders.loyalty.wait.1000ms",
        "orders.loyalty.wait.5000ms",
        "orders.loyalty.dlq",
    ]


@pytest.mark.parametrize(
    ("amount", "currency", "points"),
    [(5_648, "EUR", 56), (99, "EUR", 0), (1_000, "JPY", 1_000), (12_345, "KWD", 12)],
)
def test_one_point_per_whole_currency_unit(amount: int, currency: str, points: int) -> None:
    assert points_for(amount, currency) == points


def test_a_cancellation_mail_tells_the_reason_and_what_was_undone() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    payload = cancelled_payload(
        final_status="CANCELLED", reason="CUSTOMER_CANCELLED", detail="changed my mind", at=at
    )
    envelope = new_event(ORDER_CANCELLED_V1, event_id="e-1", subject="o-1", time=at, data=payload)

    mail = render(ReceivedEvent(envelope, payload))

    assert (mail.recipient, mail.subject) == ("c-1@example.com", "Your order o-1 was cancelled")
    assert "customer cancelled (changed my mind)" in mail.body
    assert "refunded" in mail.body and "put back in stock" in mail.body
    assert mail.message_id == message_id_for("e-1") == "<e-1@order-saga>"
