"""Issue 11 parts 3 and 4 against the REAL broker, databases and an aiosmtpd server: money in any currency
through the saga, the mail and the loyalty points; hard mail addresses and SMTP replies, classified.

The strict relay is aiosmtpd without SMTPUTF8 (`enable_SMTPUTF8=False`, as many relays are) that answers
RCPT TO as each test scripts it (a 550, a 451).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from infra.db import Database
from infra.settings import Settings
from orchestrator.client import place_order
from reactors.dlq import Selection, list_dead_letters, redrive
from reactors.loyalty.models import LoyaltyBalance
from reactors.loyalty.reactor import REACTOR as LOYALTY
from reactors.models import DeliveryOutcome, InboxMessage
from reactors.notification.models import Notification
from reactors.notification.reactor import REACTOR as NOTIFICATION
from reactors.notification.smtp_sink import SmtpSink
from tests.conftest import SagaHarness
from tests.events import cancelled_event, shipped_event
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.integration.event_helpers import publish
from tests.support import add_product, free_port, order_command

pytestmark = pytest.mark.integration

PUNYCODE = "ada@xn--bcher-kva.example"
UNICODE_LOCAL_PART = "jürgen@example.com"


class ScriptedReplies:
    """RCPT TO replies by address, used up in order; an address without one left is accepted. Called from
    the sink's thread."""

    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}

    def __call__(self, address: str) -> str | None:
        replies = self.script.get(address)
        return replies.pop(0) if replies else None


@pytest.fixture
async def strict(database: tuple[Settings, Database]) -> AsyncIterator[EventStack]:
    """An event stack whose SMTP server offers no SMTPUTF8 and answers RCPT TO as scripted
    (`stack.sink.rcpt_reply.script`)."""
    settings, db = database
    sink = SmtpSink("127.0.0.1", free_port(), smtputf8=False, rcpt_reply=ScriptedReplies())
    sink.start()
    try:
        async with event_stack(settings, db, sink) as stack:
            yield stack
    finally:
        sink.stop()


def script(stack: EventStack) -> dict[str, list[str]]:
    replies = stack.sink.rcpt_reply
    assert isinstance(replies, ScriptedReplies)
    return replies.script


async def notification(stack: EventStack, event_id: str) -> Notification:
    row = await stack.read(lambda s: s.get(Notification, event_id))
    assert isinstance(row, Notification)
    return row


async def settled(stack: EventStack, outcome: str, count: int = 1) -> None:
    async def reached() -> bool:
        return len(await stack.ledger("notification", outcome)) >= count

    await eventually(reached, what=f"{count} notification delivery(ies) {outcome}")


# --- money in any currency


async def test_jpy_and_kwd_orders_mail_their_totals_and_credit_points_by_the_iso_exponent(
    saga: SagaHarness, smtp_sink: SmtpSink
) -> None:
    """The issue's reproduction: 1500 JPY mailed "15.00 JPY", 1500 KWD "15.00 KWD"."""
    async with event_stack(saga.settings, saga.database, smtp_sink) as stack:
        await stack.start_reactors()
        stack.start_relay()
        await add_product(saga.database.sessions, "SKU-JPY", on_hand=5, unit_price=1_500, currency="JPY")
        await add_product(saga.database.sessions, "SKU-KWD", on_hand=5, unit_price=1_500, currency="KWD")
        yen = order_command(items={"SKU-JPY": 1}, customer_id="cust-jpy")
        dinar = order_command(items={"SKU-KWD": 1}, customer_id="cust-kwd")
        handles = [
            await place_order(saga.database.sessions, saga.client, saga.task_queue, command)
            for command in (yen, dinar)
        ]
        await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), 30)

        async def processed() -> bool:
            return await stack.count(InboxMessage) == 6  # notification, loyalty, analytics x2

        await eventually(processed, what="every reactor processed both shipped events")
        mails = {mail["To"]: mail.get_content().splitlines() for mail in stack.sink.messages}
        assert "Total: 1500 JPY" in mails["cust-jpy@example.com"]
        assert "Total: 1.500 KWD" in mails["cust-kwd@example.com"]
        yen_points = await stack.read(lambda s: s.get(LoyaltyBalance, "cust-jpy"))
        dinar_points = await stack.read(lambda s: s.get(LoyaltyBalance, "cust-kwd"))
        assert (yen_points.points, dinar_points.points) == (1_500, 1)


async def test_four_and_three_decimal_currencies_through_the_reactors(events: EventStack) -> None:
    """Beyond the old hand-kept table: CLF (4 decimals) and BHD (3) were "two decimals" by default."""
    await events.start_reactor(NOTIFICATION)
    await events.start_reactor(LOYALTY)
    clf = shipped_event(customer_id="cust-clf", currency="CLF", lines=(("SKU-A", 3, 45_000),))
    bhd = shipped_event(customer_id="cust-bhd", currency="BHD", lines=(("SKU-A", 1, 12_345),))
    for event in (clf, bhd):
        await publish(events, event)
    await settled(events, DeliveryOutcome.PROCESSED, 2)

    mails = {mail["To"]: mail.get_content().splitlines() for mail in events.sink.messages}
    assert "Total: 13.5000 CLF" in mails["cust-clf@example.com"]
    assert "Total: 12.345 BHD" in mails["cust-bhd@example.com"]

    async def credited() -> bool:
        points = await events.read(
            lambda s: s.execute(select(LoyaltyBalance.customer_id, LoyaltyBalance.points))
        )
        return dict(points.all()) == {"cust-clf": 13, "cust-bhd": 12}

    await eventually(credited, what="points of 13.5 CLF and 12.345 BHD")


async def test_an_event_in_a_currency_without_a_minor_unit_is_dead_lettered_with_the_reason(
    events: EventStack,
) -> None:
    """A currency the API refuses (XAU) can still arrive from older data: no guessed decimals, no retries."""
    await events.start_reactor(NOTIFICATION)
    await events.start_reactor(LOYALTY)
    await publish(events, gold := shipped_event(customer_id="cust-gold", currency="XAU"))

    async def both_dead_lettered() -> bool:
        notified = await events.ledger("notification", DeliveryOutcome.DEAD_LETTERED)
        credited = await events.ledger("loyalty", DeliveryOutcome.DEAD_LETTERED)
        return len(notified) == len(credited) == 1

    await eventually(both_dead_lettered, what="XAU dead-lettered by both reactors")
    for name in ("notification", "loyalty"):
        [letter] = await list_dead_letters(events.settings, events.database.sessions, name)
        assert letter.message_id == gold.id and "XAU has no minor unit" in letter.reason
        assert await events.ledger(name, DeliveryOutcome.RETRY_SCHEDULED) == []
    assert events.sink.messages == []


# --- mail addresses and SMTP replies


async def test_a_punycode_address_stays_ascii_through_a_relay_without_smtputf8(strict: EventStack) -> None:
    """The issue's reproduction: ada@xn--bcher-kva.example was mailed as ada@bücher.example and never went
    out. An event stored before the fix, with the Unicode domain, is mailed with the ASCII one too."""
    await strict.start_reactor(NOTIFICATION)
    given = shipped_event(customer_id="cust-idna", email=PUNYCODE)
    legacy = cancelled_event(customer_id="cust-legacy", email="bob@bücher.example")
    for event in (given, legacy):
        await publish(strict, event)
    await settled(strict, DeliveryOutcome.PROCESSED, 2)

    assert sorted(map(tuple, strict.sink.envelopes)) == [
        ("ada@xn--bcher-kva.example",),
        ("bob@xn--bcher-kva.example",),
    ]
    assert sorted(mail["To"] for mail in strict.sink.messages) == [PUNYCODE, "bob@xn--bcher-kva.example"]
    for event, address in ((given, PUNYCODE), (legacy, "bob@xn--bcher-kva.example")):
        row = await notification(strict, event.id)
        assert (row.status, row.recipient, row.send_attempts) == ("sent", address, 1)
    assert await strict.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED) == []


async def test_an_address_that_needs_smtputf8_fails_at_once_where_the_relay_lacks_it(
    strict: EventStack,
) -> None:
    """The issue's reproduction: jürgen@example.com was retried 5 times as "transient", dead-lettered, and
    its notification stayed `sending` for good."""
    await strict.start_reactor(NOTIFICATION)
    await publish(strict, event := shipped_event(customer_id="cust-utf8", email=UNICODE_LOCAL_PART))
    await settled(strict, DeliveryOutcome.DEAD_LETTERED)

    assert await strict.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED) == []
    row = await notification(strict, event.id)
    assert row.status == "failed" and row.send_attempts == 1
    assert row.last_error is not None and "SMTPUTF8" in row.last_error
    [letter] = await list_dead_letters(strict.settings, strict.database.sessions, "notification")
    assert letter.message_id == event.id and "needs SMTPUTF8" in letter.reason
    assert strict.sink.messages == []


async def test_an_address_that_needs_smtputf8_is_sent_where_the_relay_offers_it(events: EventStack) -> None:
    await events.start_reactor(NOTIFICATION)
    await publish(events, event := shipped_event(customer_id="cust-utf8", email=UNICODE_LOCAL_PART))
    await settled(events, DeliveryOutcome.PROCESSED)

    assert events.sink.envelopes == [[UNICODE_LOCAL_PART]]
    assert events.sink.messages[0]["To"] == UNICODE_LOCAL_PART
    assert (await notification(events, event.id)).status == "sent"


async def test_a_550_goes_to_the_dlq_once_the_row_says_failed_and_a_redrive_sends_it(
    strict: EventStack,
) -> None:
    await strict.start_reactor(NOTIFICATION)
    script(strict)["gone@example.com"] = ["550 5.1.1 <gone@example.com>: no such user"]
    await publish(strict, event := shipped_event(customer_id="cust-550", email="gone@example.com"))
    await settled(strict, DeliveryOutcome.DEAD_LETTERED)

    assert await strict.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED) == []
    row = await notification(strict, event.id)
    assert row.status == "failed" and row.last_error is not None and "550 5.1.1" in row.last_error
    [letter] = await list_dead_letters(strict.settings, strict.database.sessions, "notification")
    assert "recipient refused" in letter.reason and "550" in letter.reason

    # The mailbox exists again (the script is used up): the redriven event is sent, counted afresh.
    assert (
        await redrive(strict.settings, strict.database.sessions, "notification", Selection.of_ids([event.id]))
    ).redriven == [event.id]
    await settled(strict, DeliveryOutcome.PROCESSED)
    row = await notification(strict, event.id)
    assert (row.status, row.send_attempts) == ("sent", 1)
    assert [mail["To"] for mail in strict.sink.messages] == ["gone@example.com"]


async def test_a_451_is_retried_then_sent(strict: EventStack) -> None:
    await strict.start_reactor(NOTIFICATION)
    script(strict)["busy@example.com"] = ["451 4.3.0 mailbox busy, try again later"]
    await publish(strict, event := shipped_event(customer_id="cust-451", email="busy@example.com"))
    await settled(strict, DeliveryOutcome.PROCESSED)

    [retry] = await strict.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED)
    assert retry.detail is not None and "451" in retry.detail
    assert await strict.ledger("notification", DeliveryOutcome.DEAD_LETTERED) == []
    row = await notification(strict, event.id)
    assert (row.status, row.send_attempts) == ("sent", 2)
    assert [mail["To"] for mail in strict.sink.messages] == ["busy@example.com"]


async def test_a_relay_that_always_defers_ends_failed_never_sending(strict: EventStack) -> None:
    """The sibling of the 451: the attempts run out (3 in these tests). The row must not stay `retrying`
    or `sending` once nobody will try again."""
    await strict.start_reactor(NOTIFICATION)
    script(strict)["busy@example.com"] = ["451 4.3.0 mailbox busy, try again later"] * 10
    await publish(strict, event := shipped_event(customer_id="cust-451", email="busy@example.com"))
    await settled(strict, DeliveryOutcome.DEAD_LETTERED)

    attempts = strict.settings.reactor_max_attempts
    assert len(await strict.ledger("notification", DeliveryOutcome.RETRY_SCHEDULED)) == attempts - 1
    row = await notification(strict, event.id)
    assert (row.status, row.send_attempts) == ("failed", attempts)
    [letter] = await list_dead_letters(strict.settings, strict.database.sessions, "notification")
    assert f"gave up after {attempts} send attempt(s)" in letter.reason and "451" in letter.reason


async def test_a_duplicate_copy_does_not_use_up_the_attempts_of_a_delivery(strict: EventStack) -> None:
    """A second copy of an event (a relay's resend) retried beside the first: three deferrals in all, more
    than either delivery alone may take before it gives up (3 here). Counted per row, they dead-lettered
    one copy of an event whose mail was then sent; counted per delivery, both end in the one mail."""
    await strict.start_reactor(NOTIFICATION)
    script(strict)["busy@example.com"] = ["451 4.3.0 mailbox busy, try again later"] * 3
    event = shipped_event(customer_id="cust-copies", email="busy@example.com")
    await publish(strict, event)
    await settled(strict, DeliveryOutcome.RETRY_SCHEDULED)
    await publish(strict, event)  # the second copy, on its own (not deduplicated within one batch)
    await settled(strict, DeliveryOutcome.PROCESSED)
    await settled(strict, DeliveryOutcome.DUPLICATE_IGNORED)

    assert await strict.ledger("notification", DeliveryOutcome.DEAD_LETTERED) == []
    assert (await notification(strict, event.id)).status == "sent"
    assert [mail["To"] for mail in strict.sink.messages] == ["busy@example.com"]


async def test_a_transient_failure_leaves_the_row_retrying_not_sending(strict: EventStack) -> None:
    """Between attempts the row says what happened; the SMTP server down is transient like a 4xx."""
    strict.settings = strict.settings.model_copy(update={"reactor_retry_delays_ms": [60_000]})
    strict.sink.stop()
    await strict.start_reactor(NOTIFICATION)
    await publish(strict, event := shipped_event(customer_id="cust-down"))
    await settled(strict, DeliveryOutcome.RETRY_SCHEDULED)

    row = await notification(strict, event.id)
    assert row.status == "retrying" and row.last_error is not None
    assert "cannot connect" in row.last_error
