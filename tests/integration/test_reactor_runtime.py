"""The reactor runtime's one batch path against the REAL RabbitMQ: acks stay right when a batch splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent, encode_event
from reactors.base import Reactor, ReactorContext
from reactors.models import DeliveryOutcome
from tests.events import shipped_event
from tests.integration.conftest import EventStack, eventually
from tests.integration.event_helpers import publish

pytestmark = pytest.mark.integration


def once_unprepared(subject: str) -> Reactor:
    """A test-only reactor whose preparation fails the first time for `subject`, then succeeds."""
    failed: list[str] = []

    async def prepare(event: ReceivedEvent, _context: ReactorContext) -> None:
        if event.subject == subject and not failed:
            failed.append(event.id)
            raise ConnectionError(f"not yet: {subject}")

    async def apply(_event: ReceivedEvent, _session: AsyncSession) -> None:
        pass

    async def apply_batch(_events: Sequence[ReceivedEvent], _session: AsyncSession) -> None:
        pass

    return Reactor(
        name="unprepared",
        routing_keys=("order.shipped.v1",),
        apply=apply,
        prepare=prepare,
        apply_batch=apply_batch,
    )


async def test_a_batch_split_by_a_failed_preparation_acks_each_delivery_once(
    events: EventStack, caplog: pytest.LogCaptureFixture
) -> None:
    """[A, B, copy of A] in one batch, A's preparation failing once: A is retried, B committed, the copy
    handled on its own. The copy's ack must not cover B (acked right after): a delivery acked twice makes
    the broker close the channel, and the runtime would reconnect."""
    first, other = shipped_event(), shipped_event()
    reactor = once_unprepared(first.subject)
    await events.declare([reactor.subscription])
    for event in (first, other, first):  # queued before the reactor consumes: one batch
        await publish(events, event, body=encode_event(event))
    await events.start_reactor(reactor)

    async def settled() -> bool:
        return len(await events.ledger("unprepared")) == 4  # one row per delivery: three and the retry

    await eventually(settled, what="every delivery settled")
    outcomes = Counter((record.subject, record.outcome) for record in await events.ledger("unprepared"))
    assert outcomes == {
        (first.subject, DeliveryOutcome.RETRY_SCHEDULED): 1,
        (first.subject, DeliveryOutcome.PROCESSED): 1,
        (first.subject, DeliveryOutcome.DUPLICATE_IGNORED): 1,
        (other.subject, DeliveryOutcome.PROCESSED): 1,
    }
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "unknown delivery tag" in m or "broker unavailable" in m], messages
