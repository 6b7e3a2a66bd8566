"""What a dead letter is, which failure group it belongs to, and which ones an operator selected (pure).

A `DeadLetter` is read from a message in `<ns>.<reactor>.dlq`: the runtime's `DeadLetterHeaders`, or the
broker's `x-death` when the broker gave up on it (the consumer never acked it `x-delivery-limit` times).

Failure groups, after NServiceBus ServicePulse's: dead letters whose reasons differ only in their variable
parts (ids, numbers, addresses) share a group, so that one fix and one redrive cover them all. The group's
`signature` is the reason with those parts masked (`<id>`, `<n>`, `<email>`); its id is a short hash of the
signature, stable across listings and processes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from messaging import headers as amqp_headers
from messaging.headers import DeadLetterHeaders

UNKNOWN = "?"

_MASKS = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE), "<id>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"[^\s@<>'\"]+@[^\s@<>'\"]+"), "<email>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def failure_signature(reason: str) -> str:
    """`reason` with its variable parts masked: "gave up after 3 attempt(s): refused 9f0c...-..." ->
    "gave up after <n> attempt(s): refused <id>"."""
    signature = reason
    for pattern, replacement in _MASKS:
        signature = pattern.sub(replacement, signature)
    return signature.strip()


def group_id(signature: str) -> str:
    """The failure group's id: 12 hex digits of the signature's SHA-256."""
    return hashlib.sha256(signature.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DeadLetter:
    """One message in a reactor's DLQ. `dead_lettered_at` is None when the message does not say (then it
    has no age); `order_id` and `event_type` are "?" when the message does not say either."""

    message_id: str
    event_type: str
    order_id: str
    reason: str
    attempts: int
    dead_lettered_at: datetime | None
    redriven: int = 0  # times it was redriven before and came back

    @property
    def signature(self) -> str:
        return failure_signature(self.reason)

    @property
    def group(self) -> str:
        return group_id(self.signature)

    def age_seconds(self, now: datetime) -> float | None:
        return None if self.dead_lettered_at is None else (now - self.dead_lettered_at).total_seconds()


@dataclass(frozen=True)
class DeadLetterDetail:
    """A dead letter with its AMQP properties and headers (as text or numbers) and its payload (the
    decoded JSON, or the body as text when it is not JSON)."""

    letter: DeadLetter
    properties: dict[str, Any]
    headers: dict[str, Any]
    payload: Any


@dataclass(frozen=True)
class FailureGroup:
    """Dead letters of one reactor that failed the same way."""

    id: str
    signature: str
    count: int
    event_types: tuple[str, ...]
    first_at: datetime | None
    last_at: datetime | None
    example_reason: str


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operation takes; every criterion given must hold, none given means all.

    `message_ids`: exact ids; `group`: a failure group id; `event_type`: exact CloudEvents type; `reason`:
    a case-insensitive substring of the reason; `order_id`: exact; `since`/`until`: the time it was
    dead-lettered, `since` inclusive, `until` exclusive (a letter without that time matches no range).
    """

    message_ids: frozenset[str] | None = None
    group: str | None = None
    event_type: str | None = None
    reason: str | None = None
    order_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def of_ids(cls, message_ids: Collection[str]) -> Selection:
        return cls(message_ids=frozenset(message_ids))

    @property
    def everything(self) -> bool:
        return self == Selection()

    def matches(self, letter: DeadLetter) -> bool:
        if self.message_ids is not None and letter.message_id not in self.message_ids:
            return False
        if self.group is not None and letter.group != self.group:
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.reason is not None and self.reason.casefold() not in letter.reason.casefold():
            return False
        if self.order_id is not None and letter.order_id != self.order_id:
            return False
        if self.since is None and self.until is None:
            return True
        at = letter.dead_lettered_at
        if at is None:
            return False
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)

    def describe(self) -> str:
        """A short human-readable form, for logs and the ledger."""
        parts = [
            f"{len(self.message_ids)} id(s)" if self.message_ids is not None else "",
            f"group {self.group}" if self.group else "",
            f"type {self.event_type}" if self.event_type else "",
            f"reason ~ {self.reason!r}" if self.reason else "",
            f"order {self.order_id}" if self.order_id else "",
            f"since {self.since.isoformat()}" if self.since else "",
            f"until {self.until.isoformat()}" if self.until else "",
        ]
        return ", ".join(part for part in parts if part) or "all"


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """What a dead letter is and why it is there, from the runtime's headers or the broker's x-death."""
    headers = message.headers
    body = json_object(message.body)
    reason = headers.get(DeadLetterHeaders.REASON)
    attempts = headers.get(DeadLetterHeaders.ATTEMPTS)
    at: object = headers.get(DeadLetterHeaders.AT)
    deaths = headers.get(amqp_headers.DEATHS)
    if reason is None and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        # Dead-lettered by the broker itself: the consumer failed to ack it x-delivery-limit times.
        death = deaths[0]
        reason = (
            f"broker: {text(death.get('reason'))} on {text(death.get('queue'))} (consumer never acked it)"
        )
        attempts = death.get("count")
        at = death.get("time")
    redriven = headers.get(DeadLetterHeaders.REDRIVEN)
    return DeadLetter(
        message_id=message.message_id or str(body.get("id", UNKNOWN)),
        event_type=str(
            headers.get(DeadLetterHeaders.EVENT_TYPE) or body.get("type") or message.type or UNKNOWN
        ),
        order_id=str(headers.get(DeadLetterHeaders.SUBJECT) or body.get("subject") or UNKNOWN),
        reason=str(reason or UNKNOWN),
        attempts=attempts if isinstance(attempts, int) else 0,
        dead_lettered_at=_time(at),
        redriven=redriven if isinstance(redriven, int) else 0,
    )


def detail_of(message: AbstractIncomingMessage) -> DeadLetterDetail:
    body: Any
    try:
        body = json.loads(message.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = message.body.decode(errors="replace")
    properties = {
        "message_id": message.message_id,
        "type": message.type,
        "content_type": message.content_type,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
    }
    return DeadLetterDetail(describe(message), properties, plain(message.headers), body)


def group(letters: Iterable[DeadLetter]) -> list[FailureGroup]:
    """The failure groups of these letters, largest first (then by signature)."""
    members: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        members.setdefault(letter.signature, []).append(letter)
    groups = []
    for signature, found in members.items():
        times = sorted(letter.dead_lettered_at for letter in found if letter.dead_lettered_at is not None)
        groups.append(
            FailureGroup(
                id=group_id(signature),
                signature=signature,
                count=len(found),
                event_types=tuple(sorted({letter.event_type for letter in found})),
                first_at=times[0] if times else None,
                last_at=times[-1] if times else None,
                example_reason=found[0].reason,
            )
        )
    return sorted(groups, key=lambda g: (-g.count, g.signature))


def plain(value: object) -> Any:
    """AMQP header values as JSON-friendly values (bytes as text, times as ISO 8601)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def json_object(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bytes | str) and value:
        try:
            parsed = datetime.fromisoformat(text(value))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
