"""The notification reactor: renders one mail per event and sends it over SMTP (aiosmtplib).

A mail cannot join a database transaction, so the send is made idempotent by event id around it. The
reactor's two handlers say what they do:

- `send_mails` (the runtime's preparation step, before the inbox transaction):
  1. claims the batch's events in `notifications` in one short transaction: a row already `sent` means the
     mail went out before (nothing to do); a row `sending` that was claimed less than
     `notification_send_lease_seconds` ago belongs to another notifier (retry later); otherwise (new,
     `retrying`, an expired `sending`, or `failed` again after a redrive) this notifier claims it (status
     `sending`, claimed now).
  2. sends each mail over one SMTP connection kept open (`smtp.Mailer`). The RFC 5322 Message-ID is derived
     from the event id (`<event-id@order-saga>`). A mail whose claim has expired by then is not sent.
  3. right after each send, marks that row `sent` in a short transaction of its own (not one for the
     batch, which would keep the first mails unmarked while the others are being sent).
- `check_mails_sent` (the runtime's apply step, inside the inbox transaction): every mail of the batch must
  be recorded `sent` by now; the runtime then inserts the inbox rows and acks.

A failed send is classified (`smtp.classify`): a permanent failure (a 5xx reply, a recipient that needs
SMTPUTF8 where the server does not offer it) marks the row `failed` with its reason and is dead-lettered at
once; a transient one (4xx, connection errors, timeouts) marks it `retrying` and is retried with backoff. The
reactor gives up on its own at a delivery's last attempt (`reactor_max_attempts`, counted per delivery, so a
duplicate copy's sends do not use it up; row `failed`, dead-lettered with the reason), so that no row is left
`sending` or `retrying` once the runtime stops retrying. A redrive from the DLQ claims a `failed` row again.

A redelivered event (duplicate publish, redelivery after a crash anywhere after step 3) finds `sent` and
sends nothing. The crash window that remains, stated honestly: if the process dies after the SMTP server
accepted the mail (step 2) but before step 3 commits (milliseconds), the event is redelivered, the claim
has expired after the lease, and the mail is sent a second time. That copy carries the same Message-ID, so
mail clients and many servers collapse the pair into one; no mail is ever lost to avoid it (at least once,
deduplicated everywhere but in that window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1, OrderCancelledV1, OrderShippedV1
from domain import money
from infra.models import utcnow
from infra.settings import Settings
from reactors.base import PermanentError, Reactor, ReactorContext, TransientError, unsupported
from reactors.notification.models import FAILED, RETRYING, SENDING, SENT, Notification
from reactors.notification.smtp import SEND_FAILURES, Mailer, classify, compose, mailable_address
from reactors.sql import dialect_insert

NAME = "notification"
MESSAGE_ID_DOMAIN = "order-saga"

COMPENSATION_TEXT = {
    "release_inventory": "the reserved items were put back in stock",
    "refund_payment": "any payment taken was refunded in full",
    "cancel_shipment": "the shipment was cancelled",
}


def message_id_for(event_id: str) -> str:
    return f"<{event_id}@{MESSAGE_ID_DOMAIN}>"


class Mail(NamedTuple):
    recipient: str  # as mailed: an ASCII (IDNA) domain whenever the local part is ASCII
    subject: str
    body: str


def render(event: ReceivedEvent) -> Mail:
    """The mail for an event. Raises PermanentError for an event it does not handle, an address that cannot
    be mailed, or a currency the money module cannot format."""
    match event.data:
        case OrderShippedV1() as shipped:
            items = "\n".join(f"  {line.quantity} x {line.sku}" for line in shipped.lines)
            return Mail(
                mailable_address(shipped.customer_email),
                f"Your order {shipped.order_id} has shipped",
                f"Good news: your order {shipped.order_id} is on its way.\n\n{items}\n\n"
                f"Carrier: {shipped.shipment.carrier}\n"
                f"Tracking number: {shipped.shipment.tracking_number}\n"
                f"Total: {_money(shipped.total_amount, shipped.currency)}\n",
            )
        case OrderCancelledV1() as cancelled:
            undone = [COMPENSATION_TEXT.get(name, name) for name in cancelled.compensations]
            what_we_did = (
                "".join(f"  - {line}\n" for line in undone) or "  - nothing had been charged or shipped\n"
            )
            return Mail(
                mailable_address(cancelled.customer_email),
                f"Your order {cancelled.order_id} was cancelled",
                f"We are sorry: your order {cancelled.order_id} was cancelled.\n\n"
                f"Reason: {cancelled.reason.replace('_', ' ').lower()} ({cancelled.detail})\n\n"
                f"What we did:\n{what_we_did}",
            )
        case _:
            raise unsupported(NAME, event)


def _money(minor_units: int, currency: str) -> str:
    try:
        return money.format_amount(minor_units, currency)
    except money.UnsupportedCurrency as err:
        raise PermanentError(f"{NAME}: cannot write the amount: {err}") from err


def mailer_of(context: ReactorContext) -> Mailer:
    mailer = context.resources.get(NAME)
    if not isinstance(mailer, Mailer):
        mailer = context.resources[NAME] = Mailer(context.settings)
    return mailer


async def send_mails(events: Sequence[ReceivedEvent], context: ReactorContext) -> dict[str, Exception]:
    """`send_mails(events, context) -> {event_id: error}`: send each event's mail unless it was sent already
    (see the module docstring): the claims of the whole batch in one transaction, then each mail, each
    marked `sent` (or `retrying`, `failed`) in its own transaction right after its send, so that the window
    for a second mail stays that of one mail. Returns the error of each event whose mail is not sent:
    PermanentError (dead-letter now) or TransientError (retry later)."""
    failed: dict[str, Exception] = {}
    mails: dict[str, Mail] = {}
    for event in events:
        try:
            mails[event.id] = render(event)
        except PermanentError as err:
            failed[event.id] = err
    try:
        claimed = await _claim(
            [event for event in events if event.id in mails], mails, context.settings, context.sessions
        )
    except Exception as err:  # e.g. a competing notifier won a race on a new row: all of them later
        return {**failed, **{event_id: TransientError(f"claim failed: {err}") for event_id in mails}}
    failed.update(claimed.failed)
    mailer = mailer_of(context)
    pending = list(claimed.to_send)
    owned = set(pending)
    delivery_attempt = {event.id: event.attempt for event in events}
    for index, (event_id, attempts) in enumerate(claimed.to_send.items()):
        if utcnow() - claimed.at >= claimed.lease / 2:
            # A slow relay or a busy host: keep the rest of the batch ours rather than let the claims lapse.
            owned &= await _renew(context.sessions, pending[index:], claimed)
        if event_id not in owned:
            failed[event_id] = TransientError(f"claim of the mail for {event_id} lapsed before sending")
            continue
        mail = mails[event_id]
        try:
            await mailer.send(compose(context.settings, *mail, message_id_for(event_id)))
        except SEND_FAILURES as err:
            error = classify(err, mail.recipient)
            last = delivery_attempt[event_id] >= context.settings.reactor_max_attempts
            if isinstance(error, TransientError) and last:
                # The runtime dead-letters this delivery after its last attempt: give up here, so that the
                # row says `failed` with the reason rather than `retrying` for good. Counted per delivery,
                # not per row: a duplicate copy's failed sends must not use up this one's attempts.
                error = PermanentError(f"gave up after {attempts} send attempt(s): {error}")
            failed[event_id] = error
            await _record_failure(context.sessions, event_id, claimed.at, error)
            continue
        async with context.sessions() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(Notification.event_id == event_id)
                .values(status=SENT, sent_at=utcnow(), last_error=None)
            )
    return failed


@dataclass
class _Claims:
    at: datetime
    lease: timedelta
    to_send: dict[str, int] = field(default_factory=dict)  # event id -> send attempts, this one included
    failed: dict[str, Exception] = field(default_factory=dict)


async def _claim(
    events: Sequence[ReceivedEvent],
    mails: dict[str, Mail],
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> _Claims:
    """Claim the events' mails in one transaction: a new row is claimed by inserting it; an existing one
    `sent` needs nothing; one `sending` claimed less than the lease ago belongs to another notifier (retry
    later); any other (`retrying`, an expired `sending`, a `failed` one redriven) is claimed again."""
    claims = _Claims(at=utcnow(), lease=timedelta(seconds=settings.notification_send_lease_seconds))
    if not events:
        return claims
    async with sessions() as session, session.begin():
        created = set(
            await session.scalars(
                dialect_insert(session)(Notification)
                .values(
                    [
                        {
                            "event_id": event.id,
                            "event_type": event.type,
                            "order_id": event.subject,
                            "recipient": mails[event.id].recipient,
                            "subject": mails[event.id].subject,
                            "body": mails[event.id].body,
                            "message_id": message_id_for(event.id),
                            "status": SENDING,
                            "send_attempts": 1,
                            "claimed_at": claims.at,
                            "created_at": claims.at,
                        }
                        for event in events
                    ]
                )
                .on_conflict_do_nothing(index_elements=[Notification.event_id])
                .returning(Notification.event_id)
            )
        )
        existing = {
            row.event_id: row
            for row in await session.scalars(
                select(Notification)
                .where(Notification.event_id.in_([event.id for event in events if event.id not in created]))
                .order_by(Notification.event_id)  # one lock order for every notifier
                .with_for_update()
            )
        }
        for event in events:
            row = existing.get(event.id)
            if event.id in created:
                claims.to_send[event.id] = 1
            elif row is None or row.status == SENT:
                continue
            elif row.status == SENDING and claims.at - row.claimed_at < claims.lease:
                # A fresh claim: another notifier is sending this very mail now.
                claims.failed[event.id] = TransientError(
                    f"mail for {event.id} is being sent by another notifier"
                )
            else:
                # A redriven `failed` mail starts a fresh count, so that it gets the runtime's attempts again.
                row.send_attempts = 1 if row.status == FAILED else row.send_attempts + 1
                row.status = SENDING
                row.claimed_at = claims.at
                row.recipient = mails[event.id].recipient
                claims.to_send[event.id] = row.send_attempts
    return claims


async def _renew(
    sessions: async_sessionmaker[AsyncSession], event_ids: Sequence[str], claims: _Claims
) -> set[str]:
    """Extend this notifier's claims on `event_ids` (those still `sending` under its claim) to a fresh
    lease; `claims.at` becomes the new claim time. Returns the ids still ours."""
    now = utcnow()
    async with sessions() as session, session.begin():
        renewed = set(
            await session.scalars(
                update(Notification)
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
    return renewed


async def _record_failure(
    sessions: async_sessionmaker[AsyncSession], event_id: str, claimed_at: datetime, error: Exception
) -> None:
    """The row of a failed send: `failed` (permanent) or `retrying` (transient), with the reason; only while
    this notifier's claim holds (after the lease, another one may have claimed it again)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(
                Notification.event_id == event_id,
                Notification.status == SENDING,
                Notification.claimed_at == claimed_at,
            )
            .values(
                status=FAILED if isinstance(error, PermanentError) else RETRYING,
                last_error=str(error)[:2_000],
            )
        )


async def check_mails_sent(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """Inside the inbox transaction: every event's mail must be recorded `sent` by `send_mails` by now.
    Raises TransientError naming the others (the runtime retries them)."""
    ids = [event.id for event in events]
    sent = set(
        await session.scalars(
            select(Notification.event_id).where(Notification.event_id.in_(ids), Notification.status == SENT)
        )
    )
    if missing := [event_id for event_id in ids if event_id not in sent]:
        raise TransientError(f"notification for {', '.join(missing)} is not recorded as sent")


async def check_mail_sent(event: ReceivedEvent, session: AsyncSession) -> None:
    await check_mails_sent([event], session)


# The runtime's two steps: prepare (outside the inbox transaction) sends, apply (inside it) checks.
REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key, ORDER_CANCELLED_V1.routing_key),
    apply=check_mail_sent,
    apply_batch=check_mails_sent,
    prepare_batch=send_mails,
    # Replays to it are backfills only: events it never mailed about are mailed, the others skipped.
    cannot_reset="a mail cannot be unsent",
)
