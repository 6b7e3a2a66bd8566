"""The pure rules of recovery: failure groups, dead-letter selections, replay plans and topic matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reactors.dlq import DeadLetter, Selection, group
from reactors.dlq.letters import failure_signature
from reactors.models import ReplayMode
from reactors.replay.selection import Candidate, ReplaySelection, plan_of, topic_matches

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def letter(reason: str, *, event_type: str = "order.shipped.v1", at: datetime | None = AT) -> DeadLetter:
    return DeadLetter("m-" + reason[-6:], event_type, "order-1", reason, 3, at)


@pytest.mark.parametrize(
    ("reason", "signature"),
    [
        (
            "gave up after 5 attempt(s): ConnectionError: refused 0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10",
            "gave up after <n> attempt(s): ConnectionError: refused <id>",
        ),
        ("SMTP 550 5.1.1 <ada@example.com>: no such user", "SMTP <n> <n>.<n> <<email>>: no such user"),
        ("trace 4bf92f3577b34da6a3ce929d0e0e4736  failed", "trace <id> failed"),
        ("not JSON", "not JSON"),
    ],
)
def test_a_failure_signature_masks_ids_numbers_and_addresses(reason: str, signature: str) -> None:
    assert failure_signature(reason) == signature


def test_dead_letters_failing_the_same_way_form_one_group_largest_first() -> None:
    letters = [
        letter("gave up after 3 attempt(s): refused order 0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"),
        letter(
            "gave up after 5 attempt(s): refused order 9d1a6c3e-1111-4d43-9a43-3f1f3f6b8a10",
            at=AT + timedelta(hours=1),
        ),
        letter("unknown event type or version 'order.shipped.v9'", event_type="order.shipped.v9", at=None),
    ]
    refused, unknown = group(letters)
    assert (refused.count, refused.first_at, refused.last_at) == (2, AT, AT + timedelta(hours=1))
    assert refused.id == letters[0].group == letters[1].group != unknown.id
    assert (unknown.count, unknown.first_at, unknown.event_types) == (1, None, ("order.shipped.v9",))


def test_a_selection_holds_every_criterion_given() -> None:
    found = letter("TimeoutError: statement timeout")
    assert Selection().everything and Selection().matches(found)
    assert Selection(reason="STATEMENT timeout", event_type="order.shipped.v1").matches(found)
    assert not Selection(reason="timeout", event_type="order.cancelled.v1").matches(found)
    assert Selection.of_ids([found.message_id]).matches(found)
    assert not Selection.of_ids([]).matches(found)  # an empty choice takes nothing, not everything
    assert Selection(since=AT, until=AT + timedelta(seconds=1)).matches(found)
    assert not Selection(until=AT).matches(found)  # until is exclusive
    assert not Selection(since=AT).matches(letter("x", at=None))  # no time: in no range
    assert Selection(group=found.group, order_id="order-1").matches(found)


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("order.shipped.v1", "order.shipped.v1", True),
        ("order.*.v1", "order.cancelled.v1", True),
        ("order.*", "order.shipped.v1", False),
        ("order.#", "order.shipped.v1", True),
        ("#", "order.shipped.v1", True),
        ("order.shipped.v1", "order.shipped.v2", False),
    ],
)
def test_topic_patterns_match_as_amqp_does(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_a_plan_counts_what_each_mode_would_do() -> None:
    found = [
        Candidate("e1", "order.shipped.v1", "o1", AT, applied_before=True),
        Candidate("e2", "order.cancelled.v1", "o2", AT + timedelta(minutes=1), applied_before=False),
        Candidate("e3", "order.shipped.v1", "o2", AT + timedelta(minutes=2), applied_before=True),
    ]
    selection = ReplaySelection(order_ids=("o1", "o2"))
    backfill = plan_of("analytics", ReplayMode.BACKFILL, selection, found)
    assert (backfill.total, backfill.would_apply, backfill.would_skip, backfill.would_reset) == (3, 1, 2, 0)
    assert (backfill.orders, backfill.first_at, backfill.last_at) == (2, AT, AT + timedelta(minutes=2))
    assert backfill.by_type == {"order.shipped.v1": 2, "order.cancelled.v1": 1}
    reapply = plan_of("analytics", ReplayMode.REAPPLY, selection, found)
    assert (reapply.would_apply, reapply.would_skip, reapply.would_reset) == (3, 0, 2)
    assert selection.describe() == "order(s) o1, o2" and ReplaySelection().empty
