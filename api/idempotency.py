"""`Idempotency-Key` for POST /orders, after the IETF httpapi draft.

A key belongs to one principal and one request body. The first request claims it (in flight) and
records the order id it will use; the same request again gets that same order. A claim whose request
died is taken over after a lease, or at once when the request failed cleanly, and the order id
recorded with it is reused, so a retry finishes the same order instead of creating another.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra import models

MAX_KEY_LENGTH = 255
# Printable ASCII without quote, backslash or space: UUIDs, ULIDs and the like.
KEY_CHARACTERS = rf"[!#-\[\]-~]{{1,{MAX_KEY_LENGTH}}}"
KEY_PATTERN = re.compile(KEY_CHARACTERS)


class KeyState(StrEnum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    # The request stopped on an error after claiming the key: a retry resumes it at once.
    RETRYABLE = "retryable"


class InvalidKey(ValueError):
    pass


class KeyReused(Exception):
    """The key was first used with a different request body."""


class KeyInFlight(Exception):
    """Another request with this key is still being processed."""


@dataclass(frozen=True)
class Claim:
    order_id: str
    # True when the key's request had already finished: answer with its order, do nothing else.
    replay: bool


def parse_key(header: str | None) -> str:
    """The key from the header value: a bare token or an RFC 8941 string (`"..."`) as the draft has it."""
    if header is None or not header.strip():
        raise InvalidKey("the Idempotency-Key header is required")
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not KEY_PATTERN.fullmatch(value):
        raise InvalidKey(
            f"the Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
            "without spaces, quotes or backslashes"
        )
    return value


def request_fingerprint(body: BaseModel) -> str:
    """SHA-256 of the validated body in canonical JSON: formatting and key order do not matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_replay(
    recorded_fingerprint: str,
    state: KeyState,
    claimed_at: datetime,
    fingerprint: str,
    now: datetime,
    lease: timedelta,
) -> bool:
    """For a key seen before: True to answer with its finished order, False to take the claim over.

    Raises KeyReused for another body, KeyInFlight while its request may still be running.
    """
    if recorded_fingerprint != fingerprint:
        raise KeyReused
    if state == KeyState.COMPLETED:
        return True
    if state == KeyState.RETRYABLE or claimed_at < now - lease:
        return False
    raise KeyInFlight


class IdempotencyKeys:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], lease: timedelta) -> None:
        self._sessions = sessions
        self._lease = lease

    async def claim(self, principal: str, key: str, fingerprint: str, new_order_id: str) -> Claim:
        """Claim the key for this request, or tell why not (KeyReused, KeyInFlight)."""
        try:
            return await self._claim(principal, key, fingerprint, new_order_id)
        except IntegrityError:
            # A concurrent first request inserted the key between our read and our insert.
            return await self._claim(principal, key, fingerprint, new_order_id)

    async def _claim(self, principal: str, key: str, fingerprint: str, new_order_id: str) -> Claim:
        async with self._sessions() as session, session.begin():
            row = await session.get(models.IdempotencyKey, (principal, key), with_for_update=True)
            if row is None:
                session.add(
                    models.IdempotencyKey(
                        principal=principal,
                        key=key,
                        request_hash=fingerprint,
                        order_id=new_order_id,
                        state=KeyState.IN_FLIGHT,
                    )
                )
                return Claim(new_order_id, replay=False)
            assert row.order_id is not None
            now = models.utcnow()
            replay = is_replay(
                row.request_hash, KeyState(row.state), row.updated_at, fingerprint, now, self._lease
            )
            if not replay:
                row.state = KeyState.IN_FLIGHT
                row.updated_at = now
            return Claim(row.order_id, replay=replay)

    async def complete(self, principal: str, key: str) -> None:
        await self._set_state(principal, key, KeyState.COMPLETED)

    async def mark_retryable(self, principal: str, key: str) -> None:
        await self._set_state(principal, key, KeyState.RETRYABLE)

    async def release(self, principal: str, key: str) -> None:
        """Forget the key: the request was rejected and wrote nothing, so the key may be used afresh."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                delete(models.IdempotencyKey).where(
                    models.IdempotencyKey.principal == principal,
                    models.IdempotencyKey.key == key,
                    models.IdempotencyKey.state == KeyState.IN_FLIGHT,
                )
            )

    async def _set_state(self, principal: str, key: str, state: KeyState) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(models.IdempotencyKey)
                .where(models.IdempotencyKey.principal == principal, models.IdempotencyKey.key == key)
                .values(state=state, updated_at=models.utcnow())
            )
