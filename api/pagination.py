"""Opaque keyset cursors: the sort key of the last row of a page, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class InvalidCursor(ValueError):
    """The cursor was not issued by this API (or was altered)."""


@dataclass(frozen=True)
class OrderCursor:
    """Orders are listed newest first; ties on the timestamp are broken by id."""

    created_at: datetime
    order_id: str


def encode_order_cursor(cursor: OrderCursor) -> str:
    return _encode({"created_at": cursor.created_at.isoformat(), "order_id": cursor.order_id})


def decode_order_cursor(token: str) -> OrderCursor:
    fields = _decode(token, ("created_at", "order_id"))
    try:
        created_at = datetime.fromisoformat(fields["created_at"])
        order_id = str(UUID(fields["order_id"]))
    except ValueError as err:
        raise InvalidCursor("malformed cursor") from err
    if created_at.tzinfo is None:
        raise InvalidCursor("malformed cursor")
    return OrderCursor(created_at, order_id)


def encode_product_cursor(sku: str) -> str:
    return _encode({"sku": sku})


def decode_product_cursor(token: str) -> str:
    return _decode(token, ("sku",))["sku"]


def _encode(fields: dict[str, str]) -> str:
    raw = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, keys: tuple[str, ...]) -> dict[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as err:  # ValueError covers bad JSON and bad UTF-8
        raise InvalidCursor("malformed cursor") from err
    if (
        not isinstance(fields, dict)
        or sorted(fields) != sorted(keys)
        or not all(isinstance(value, str) for value in fields.values())
    ):
        raise InvalidCursor("malformed cursor")
    return fields
