"""Pure parts of micro-batching: counter rows summed per key, and what a batch takes."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from reactors.runtime.transport import Intake as _Intake
from reactors.sql import sum_counters

pytestmark = pytest.mark.unit


def test_counter_rows_of_one_key_are_summed_in_key_order() -> None:
    rows = [
        ({"customer_id": "b"}, {"points": 3}),
        ({"customer_id": "a"}, {"points": 1}),
        ({"customer_id": "b"}, {"points": 4}),
    ]
    assert sum_counters(rows) == [
        ({"customer_id": "a"}, {"points": 1}),
        ({"customer_id": "b"}, {"points": 7}),
    ]
    assert sum_counters([]) == []


def test_counter_keys_of_several_columns_are_compared_whole() -> None:
    rows = [
        ({"day": 1, "sku": "A"}, {"units": 1, "revenue": 10}),
        ({"sku": "A", "day": 1}, {"units": 2, "revenue": 20}),
        ({"day": 1, "sku": "B"}, {"units": 1, "revenue": 5}),
    ]
    assert sum_counters(rows) == [
        ({"day": 1, "sku": "A"}, {"units": 3, "revenue": 30}),
        ({"day": 1, "sku": "B"}, {"units": 1, "revenue": 5}),
    ]


def message(tag: int) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, tag)


async def test_a_batch_is_what_has_arrived_up_to_the_limit_and_never_waits_for_more() -> None:
    intake = _Intake()
    for tag in range(5):
        intake.put(message(tag))
    assert cast(list[Any], await intake.take(3)) == [0, 1, 2]
    assert cast(list[Any], await asyncio.wait_for(intake.take(3), 0.1)) == [3, 4]  # fewer: taken at once

    waiting = asyncio.ensure_future(intake.take(3))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing arrived: it waits for a first message
    intake.put(message(5))
    assert cast(list[Any], await asyncio.wait_for(waiting, 0.1)) == [5]
