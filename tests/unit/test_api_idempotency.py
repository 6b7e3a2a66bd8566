"""Idempotency-Key parsing, request fingerprints and the claim decision (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.idempotency import (
    InvalidKey,
    KeyInFlight,
    KeyReused,
    KeyState,
    is_replay,
    parse_key,
    request_fingerprint,
)
from api.schemas import PlaceOrderIn

pytestmark = pytest.mark.unit

BODY = {
    "customer": {"id": "cust-1", "email": "cust-1@example.com"},
    "items": [{"sku": "SKU-A", "quantity": 1}],
    "payment_token": "tok_ok",
    "shipping_address": {
        "name": "Ada",
        "line1": "1 Way",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
}
NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("header", "key"),
    [("abc-123", "abc-123"), ('"abc-123"', "abc-123"), ("  padded  ", "padded"), ("k" * 255, "k" * 255)],
)
def test_keys_are_bare_tokens_or_quoted_strings(header: str, key: str) -> None:
    assert parse_key(header) == key


@pytest.mark.parametrize("header", [None, "", "   ", '""', "k" * 256, "two words", 'a"b', "tab\there", "é"])
def test_missing_or_malformed_keys_are_refused(header: str | None) -> None:
    with pytest.raises(InvalidKey):
        parse_key(header)


def test_the_fingerprint_ignores_layout_but_not_content() -> None:
    reordered = dict(reversed(list(BODY.items())))
    spaced = {**BODY, "shipping_address": {**BODY["shipping_address"], "city": "  Berlin "}}  # type: ignore[dict-item]
    other = {**BODY, "payment_token": "tok_declined"}

    fingerprint = request_fingerprint(PlaceOrderIn.model_validate(BODY))

    assert len(fingerprint) == 64
    assert request_fingerprint(PlaceOrderIn.model_validate(reordered)) == fingerprint
    # Validation strips the padding, so the request is the same order.
    assert request_fingerprint(PlaceOrderIn.model_validate(spaced)) == fingerprint
    assert request_fingerprint(PlaceOrderIn.model_validate(other)) != fingerprint


def test_a_completed_key_replays() -> None:
    assert is_replay("h", KeyState.COMPLETED, NOW - timedelta(days=1), "h", NOW, LEASE) is True


def test_another_body_under_a_known_key_is_refused_whatever_its_state() -> None:
    for state in KeyState:
        with pytest.raises(KeyReused):
            is_replay("h", state, NOW, "other", NOW, LEASE)


def test_a_key_in_flight_within_its_lease_is_busy() -> None:
    with pytest.raises(KeyInFlight):
        is_replay("h", KeyState.IN_FLIGHT, NOW - LEASE + timedelta(seconds=1), "h", NOW, LEASE)


def test_an_expired_or_retryable_claim_is_taken_over() -> None:
    assert is_replay("h", KeyState.IN_FLIGHT, NOW - LEASE - timedelta(seconds=1), "h", NOW, LEASE) is False
    assert is_replay("h", KeyState.RETRYABLE, NOW, "h", NOW, LEASE) is False
