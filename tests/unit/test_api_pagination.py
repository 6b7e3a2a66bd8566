"""Keyset cursors: they round-trip, and anything not issued by the API is refused (no I/O)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

import pytest

from api.fields import CURSOR_PATTERN
from api.pagination import (
    InvalidCursor,
    OrderCursor,
    decode_order_cursor,
    decode_product_cursor,
    encode_order_cursor,
    encode_product_cursor,
)

pytestmark = pytest.mark.unit

ORDER_ID = "0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"


def token(fields: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


def test_an_order_cursor_round_trips_and_fits_the_query_pattern() -> None:
    cursor = OrderCursor(datetime(2026, 1, 5, 10, 0, 0, 123_456, tzinfo=UTC), ORDER_ID)

    encoded = encode_order_cursor(cursor)

    assert decode_order_cursor(encoded) == cursor
    assert re.fullmatch(CURSOR_PATTERN, encoded)


def test_a_product_cursor_round_trips() -> None:
    assert decode_product_cursor(encode_product_cursor("SKU-A")) == "SKU-A"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "!!!",
        "bm90LWpzb24",  # "not-json"
        token(["a", "list"]),
        token({"created_at": "2026-01-05T10:00:00+00:00"}),
        token({"created_at": "2026-01-05T10:00:00+00:00", "order_id": ORDER_ID, "extra": "x"}),
        token({"created_at": "yesterday", "order_id": ORDER_ID}),
        token({"created_at": "2026-01-05T10:00:00", "order_id": ORDER_ID}),  # no time zone
        token({"created_at": "2026-01-05T10:00:00+00:00", "order_id": "not-a-uuid"}),
        token({"created_at": 1, "order_id": ORDER_ID}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_order_cursors_not_issued_by_the_api_are_refused(bad: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_order_cursor(bad)


def test_a_product_cursor_is_not_an_order_cursor() -> None:
    with pytest.raises(InvalidCursor):
        decode_order_cursor(encode_product_cursor("SKU-A"))
