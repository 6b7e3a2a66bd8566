"""The `notifications` rows around a wave of mails: claim, renew, record failures, mark `sent`.

A row is claimed by the notifier that is about to send its mail (status `sending`, `claimed_at` = the
claim's time, which identifies the claim); only that claim may record the send's failure. What a claim
finds, per event: no row (insert it, claimed), `sent` (nothing to send), `sending` claimed less than the
lease ago by another notifier (retry later), `sending` under a claim this process sent the mail for and has
not recorded yet (nothing to send: it is recorded with the wave), anything else (`retrying`, an expired
`sending`, a `failed` one redriven) claimed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from infra.models import utcnow
from reactors.base import PermanentError, TransientError
from reactors.notification.models import FAILED, RETRYING, SENDING, SENT, Notification
from reactors.notification.smtp import Mail
from reactors.sql import dialect_insert, table_of


@dataclass
class Claims:
    """A wave's claims: `at` (the claim time of the mails not sent yet; renewed), the lease, the mails to
    send (event id -> send attempts of the row, this one included), the claim time of each, and the events
    that cannot be claimed. An event in neither needs no mail (sent before, recorded or not)."""

    at: datetime
    lease: timedelta
    to_send: dict[str, int] = field(default_factory=dict)
    claimed_at: dict[str, datetime] = field(default_factory=dict)
    failed: dict[str, Exception] = field(default_factory=dict)


async def claim(
    sessions: async_sessionmaker[AsyncSession],
    events: Sequence[ReceivedEvent],
    mails: Mapping[str, Mail],
    lease: timedelta,
    unrecorded: Mapping[str, datetime],
) -> Claims:
    """Claim the events' mails in one transaction (see the module docstring); `unrecorded`: the mails this
    process sent whose `sent` is not committed, by event id, with the claim they were sent under."""
    claims = Claims(at=utcnow(), lease=lease)
    if not events:
        return claims
    async with sessions() as session, session.begin():
        created = set(
            await session.scalars(
                dialect_insert(session)(table_of(Notification))
                .on_conflict_do_nothing(index_elements=[Notification.event_id])
                .returning(Notification.event_id),
                [
                    {
                        "event_id": event.id,
                        "event_type": event.type,
                        "order_id": event.subject,
                        "recipient": mails[event.id].recipient,
                        "subject": mails[event.id].subject,
                        "body": mails[event.id].body,
                        "message_id": mails[event.id].message_id,
                        "status": SENDING,
                        "send_attempts": 1,
                        "claimed_at": claims.at,
                        "created_at": claims.at,
                    }
                    for event in events
                ],
            )
        )
        for event_id in created:
            claims.to_send[event_id] = 1
        if existing_ids := [event.id for event in events if event.id not in created]:
            await _claim_existing(session, claims, existing_ids, mails, unrecorded)
    claims.claimed_at = dict.fromkeys(claims.to_send, claims.at)
    return claims


async def _claim_existing(
    session: AsyncSession,
    claims: Claims,
    event_ids: list[str],
    mails: Mapping[str, Mail],
    unrecorded: Mapping[str, datetime],
) -> None:
    rows = await session.scalars(
        select(Notification)
        .where(Notification.event_id.in_(event_ids))
        .order_by(Notification.event_id)  # one lock order for every notifier
        .with_for_update()
    )
    for row in rows:
        if row.status == SENT:
            continue
        if row.status == SENDING and unrecorded.get(row.event_id) == row.claimed_at:
            continue  # sent by this process under this very claim: recorded with the wave, not sent again
        if row.status == SENDING and claims.at - row.claimed_at < claims.lease:
            # A fresh claim: another notifier is sending this very mail now.
            claims.failed[row.event_id] = TransientError(
                f"mail for {row.event_id} is being sent by another notifier"
            )
        else:
            # A redriven `failed` mail starts a fresh count, so that it gets the runtime's attempts again.
            row.send_attempts = 1 if row.status == FAILED else row.send_attempts + 1
            row.status = SENDING
            row.claimed_at = claims.at
            row.recipient = mails[row.event_id].recipient
            claims.to_send[row.event_id] = row.send_attempts


async def renew(
    sessions: async_sessionmaker[AsyncSession], event_ids: Sequence[str], claims: Claims
) -> set[str]:
    """Extend the claims on `event_ids` (those still `sending` under `claims.at`) to a fresh lease;
    `claims.at` and their `claimed_at` become now. Returns the ids still ours."""
    now = utcnow()
    async with sessions() as session, session.begin():
        renewed = set(
            await session.scalars(
                update(table_of(Notification))
                .where(
                    Notification.event_id.in_(event_ids),
                    Notification.status == SENDING,
                    Notification.claimed_at == claims.at,
                )
                .values(claimed_at=now)
                .returning(Notification.event_id)
            )
        )
    claims.at = now
    claims.claimed_at.update(dict.fromkeys(renewed, now))
    return renewed


async def record_failures(
    sessions: async_sessionmaker[AsyncSession], failures: Mapping[str, Exception], claims: Claims
) -> None:
    """The rows of failed sends, in one transaction: `failed` (permanent) or `retrying` (transient), with
    the reason; each only while its claim holds (after the lease, another notifier may have claimed it)."""
    if not failures:
        return
    table = table_of(Notification)
    async with sessions() as session, session.begin():
        await session.execute(
            update(table)
            .where(
                table.c.event_id == bindparam("id"),
                table.c.status == SENDING,
                table.c.claimed_at == bindparam("claim"),
            )
            .values(status=bindparam("new_status"), last_error=bindparam("error")),
            [
                {
                    "id": event_id,
                    "claim": claims.claimed_at[event_id],
                    "new_status": FAILED if isinstance(error, PermanentError) else RETRYING,
                    "error": str(error)[:2_000],
                }
                for event_id, error in failures.items()
            ],
        )


async def mark_sent(session: AsyncSession, event_ids: Sequence[str]) -> None:
    """In the wave's transaction (with the inbox and ledger rows): the wave's mails are `sent`. Each must
    be `sending` (sent by this process, see `notification.reactor.send_mails`) or `sent` already; raises
    TransientError naming any other (nothing is then committed, and the runtime retries them)."""
    marked = set(
        await session.scalars(
            update(table_of(Notification))
            .where(Notification.event_id.in_(event_ids), Notification.status == SENDING)
            .values(status=SENT, sent_at=utcnow(), last_error=None)
            .returning(Notification.event_id)
        )
    )
    if len(marked) == len(set(event_ids)):
        return
    rest = [event_id for event_id in event_ids if event_id not in marked]
    sent = set(
        await session.scalars(
            select(Notification.event_id).where(Notification.event_id.in_(rest), Notification.status == SENT)
        )
    )
    if missing := [event_id for event_id in rest if event_id not in sent]:
        raise TransientError(f"notification for {', '.join(missing)} is not recorded as sent")
