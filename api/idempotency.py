"""`Idempotency-Key` for POST /orders, after the IETF httpapi draft.

A key belongs to one principal and one request body. The first request claims it (in flight) in the
transaction that records its order; the same request again gets that same order. A claim whose request
died is taken over after a lease, or at once when the request failed cleanly, and the order id
recorded with it is reused, so a retry finishes the same order instead of creating another.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import BigInteger, Row, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.sql.expression import Executable

from domain.errors import InvalidOrder, UnknownProduct
from domain.model import OrderStatus
from infra import models
from infra.db import engine_of, execute_alone, rowcount, transaction

# PostgreSQL's lock_not_available: FOR UPDATE NOWAIT found the row locked.
LOCK_NOT_AVAILABLE = "55P03"
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
    # The order's status as recorded (PLACED for an order recorded by this claim).
    status: OrderStatus
    # True when this claim recorded the order.
    created: bool = False


# Writes the order of a claim, in the claim's transaction: (connection, order id).
RecordOrder = Callable[[AsyncConnection, str], Awaitable[None]]


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
        self._engine = engine_of(sessions)
        self._lease = lease

    async def claim(
        self,
        principal: str,
        key: str,
        fingerprint: str,
        new_order_id: str,
        record: RecordOrder,
    ) -> Claim:
        """Claim the key for this request and record its order, in one transaction.

        A new key is claimed (in flight) under `new_order_id` and `record(connection, order_id)` writes the
        order beside it. A key whose request died is taken over with the order id it recorded; its order
        is recorded now if that request died before. A finished key is a replay: nothing is written.
        Raises KeyReused, KeyInFlight (a request with this key holds it), or what `record` raises: then
        nothing is kept, and the key is free again.
        """
        outcome = await transaction(
            self._engine, lambda conn: self._claim(conn, principal, key, fingerprint, new_order_id, record)
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _claim(
        self,
        conn: AsyncConnection,
        principal: str,
        key: str,
        fingerprint: str,
        new_order_id: str,
        record: RecordOrder,
    ) -> Claim | Exception:
        now = models.utcnow()
        values = {
            "principal": principal,
            "key": key,
            "request_hash": fingerprint,
            "order_id": new_order_id,
            "state": KeyState.IN_FLIGHT,
            "created_at": now,
            "updated_at": now,
        }
        if rowcount(await conn.execute(_insert_new_key(conn.dialect.name, values))) == 1:
            # Leaving through an exception (a rejected order) rolls the claim back with the order.
            await record(conn, new_order_id)
            return Claim(new_order_id, replay=False, status=OrderStatus.PLACED, created=True)

        row = await _lock_existing_key(conn, principal, key)
        if row is None:
            # Inserted by a request whose transaction is still open (it holds the key's advisory lock).
            raise KeyInFlight
        assert row.order_id is not None
        replay = is_replay(
            row.request_hash, KeyState(row.state), row.updated_at, fingerprint, now, self._lease
        )
        status = await conn.scalar(select(models.Order.status).where(models.Order.id == row.order_id))
        if replay:
            assert status is not None, f"order {row.order_id} is missing although its key recorded it"
            return Claim(row.order_id, replay=True, status=OrderStatus(status))
        await conn.execute(
            update(models.IdempotencyKey)
            .where(models.IdempotencyKey.principal == principal, models.IdempotencyKey.key == key)
            .values(state=KeyState.IN_FLIGHT, updated_at=now)
        )
        if status is not None:
            return Claim(row.order_id, replay=False, status=OrderStatus(status))
        # The request that claimed the key failed before its order was written.
        try:
            await record(conn, row.order_id)
        except (UnknownProduct, InvalidOrder) as rejected:
            # Refused before anything was written (`insert_order`): free the key, for this body corrected.
            await conn.execute(
                delete(models.IdempotencyKey).where(
                    models.IdempotencyKey.principal == principal, models.IdempotencyKey.key == key
                )
            )
            return rejected
        return Claim(row.order_id, replay=False, status=OrderStatus.PLACED, created=True)

    async def complete(self, principal: str, key: str) -> None:
        await self._set_state(principal, key, KeyState.COMPLETED)

    async def mark_retryable(self, principal: str, key: str) -> None:
        await self._set_state(principal, key, KeyState.RETRYABLE)

    async def _set_state(self, principal: str, key: str, state: KeyState) -> None:
        await execute_alone(
            self._engine,
            update(models.IdempotencyKey)
            .where(models.IdempotencyKey.principal == principal, models.IdempotencyKey.key == key)
            .values(state=state, updated_at=models.utcnow()),
        )


def _insert_new_key(dialect: str, values: dict[str, Any]) -> Executable:
    """INSERT of a key not seen before; a key that exists (or is being inserted) is left alone.

    On PostgreSQL the insert also takes a transaction-scoped advisory lock on the key, without waiting:
    a conflicting insert would otherwise wait for the other request's transaction to end, where the
    draft wants an immediate 409. A key being inserted elsewhere inserts nothing here, and shows no row.
    """
    if dialect != "postgresql":
        return sqlite.insert(models.IdempotencyKey).values(values).on_conflict_do_nothing()
    table = models.IdempotencyKey.__table__
    # Keys have no spaces, so the last space of "principal key" tells the two apart.
    lock_key = func.hashtextextended(
        literal(values["principal"]) + " " + literal(values["key"]), literal(0, BigInteger)
    )
    row = select(*(literal(value, table.c[name].type) for name, value in values.items()))
    return (
        postgresql.insert(models.IdempotencyKey)
        .from_select(list(values), row.where(func.pg_try_advisory_xact_lock(lock_key)))
        .on_conflict_do_nothing()
    )


async def _lock_existing_key(
    conn: AsyncConnection, principal: str, key: str
) -> Row[str, str, datetime, str | None] | None:
    """The key's row, locked without waiting (PostgreSQL; SQLite holds the write lock already).

    Raises KeyInFlight when another request holds the row (it is taking the key over).
    """
    key_row = models.IdempotencyKey
    statement = (
        select(key_row.request_hash, key_row.state, key_row.updated_at, key_row.order_id)
        .where(key_row.principal == principal, key_row.key == key)
        .with_for_update(nowait=True)
    )
    try:
        return (await conn.execute(statement)).first()
    except DBAPIError as err:
        if getattr(err.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            raise KeyInFlight from err
        raise
