"""The notification reactor: renders one mail per event and sends it over SMTP (aiosmtplib), a wave at a time.

A mail cannot join a database transaction, so the send is made idempotent by event id around it. A wave is
the batch the runtime hands over (whatever has arrived, up to `reactor_batch_size`):

- `send_mails` (the runtime's preparation step, before the inbox transaction):
  1. renders each mail (`template`: bytes from a template compiled once, headers checked for injection)
     and claims the wave's rows in `notifications` in one transaction (`claims.claim`: a new row is
     inserted `sending`; one `sent` needs nothing; one `sending` under another notifier's fresh claim is
     retried later; the others are claimed again);
  2. sends the claimed mails over a small pool of SMTP connections kept open (`smtp.MailerPool`,
     `notification_smtp_connections` at once), renewing the claims of the mails not sent yet when half the
     lease (`notification_send_lease_seconds`) has passed. The RFC 5322 Message-ID is derived from the event
     id (`<event-id@order-saga>`). A mail whose claim has lapsed is not sent;
  3. records the failed sends in one transaction (`retrying` or `failed`, with the reason). The sent mails
     stay `sending` and are remembered by this process as sent, with their claim.
- `mark_mails_sent` (the runtime's apply step, inside the inbox transaction): the wave's mails become `sent`
  in the transaction of their inbox and ledger rows: one transaction per wave.

The claim also stands in for the runtime's inbox lookup before preparing (`prepare_skips_applied`): a mail
whose event was applied is recorded `sent` in the same transaction, and sent rows are kept longer than inbox
rows (`retention_notifications_days` 90 against `retention_inbox_days` 30 by default).

A failed send is classified (`smtp.classify`): a permanent failure (a 5xx reply, a recipient that needs
SMTPUTF8 where the server does not offer it, a header with a line break) marks the row `failed` with its
reason and is dead-lettered at once; a transient one (4xx, connection errors, timeouts) marks it `retrying`
and is retried with backoff. The reactor gives up on its own at a delivery's last attempt
(`reactor_max_attempts`, counted per delivery, so a duplicate copy's sends do not use it up; row `failed`,
dead-lettered with the reason), so that no row is left `sending` or `retrying` once the runtime stops
retrying. A redrive from the DLQ claims a `failed` row again.

If the wave's transaction fails (the database went away), the runtime handles its messages again one by
one: each finds its row `sending` under the claim this process remembers, is not sent again, and is marked
`sent` in its own transaction (or retried later, still remembered). The window that remains, stated
honestly: if the process dies after the SMTP server accepted a wave's mails (step 2) but before the wave's
transaction commits, its events are redelivered, the claims expire after the lease, and those mails are sent
a second time: at most one wave (`reactor_batch_size` mails), each copy with the same Message-ID, so mail
clients and many servers collapse the pair into one. No mail is ever lost to avoid it (at least once,
deduplicated everywhere but in that window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1, OrderCancelledV1, OrderShippedV1
from domain import money
from infra.models import utcnow
from infra.settings import Settings
from reactors.base import PermanentError, Reactor, ReactorContext, TransientError, unsupported
from reactors.notification.claims import Claims, claim, mark_sent, record_failures, renew
from reactors.notification.smtp import SEND_FAILURES, Mail, MailerPool, classify, mailable_address

NAME = "notification"
MESSAGE_ID_DOMAIN = "order-saga"

COMPENSATION_TEXT = {
    "release_inventory": "the reserved items were put back in stock",
    "refund_payment": "any payment taken was refunded in full",
    "cancel_shipment": "the shipment was cancelled",
}


def message_id_for(event_id: str) -> str:
    return f"<{event_id}@{MESSAGE_ID_DOMAIN}>"


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
                message_id_for(event.id),
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
                message_id_for(event.id),
            )
        case _:
            raise unsupported(NAME, event)


def _money(minor_units: int, currency: str) -> str:
    try:
        return money.format_amount(minor_units, currency)
    except money.UnsupportedCurrency as err:
        raise PermanentError(f"{NAME}: cannot write the amount: {err}") from err


class Notifier:
    """What outlives one wave (a `ReactorContext` resource): the SMTP pool, and the mails sent whose `sent`
    is not committed yet (event id -> the claim they were sent under), forgotten once it is."""

    def __init__(self, settings: Settings) -> None:
        self.pool = MailerPool(settings)
        self.unrecorded: dict[str, datetime] = {}

    def forget(self, event_ids: Sequence[str], older_than: datetime) -> None:
        """Forget the mails of `event_ids` (recorded `sent` now), and any sent before `older_than` (left
        unrecorded when their events went away: after the lease their rows may be claimed again anyway)."""
        for event_id in event_ids:
            self.unrecorded.pop(event_id, None)
        for event_id, claimed_at in list(self.unrecorded.items()):
            if claimed_at < older_than:
                del self.unrecorded[event_id]

    async def aclose(self) -> None:
        await self.pool.aclose()


def notifier_of(context: ReactorContext) -> Notifier:
    notifier = context.resources.get(NAME)
    if not isinstance(notifier, Notifier):
        notifier = context.resources[NAME] = Notifier(context.settings)
    return notifier


async def send_mails(events: Sequence[ReceivedEvent], context: ReactorContext) -> dict[str, Exception]:
    """`send_mails(events, context) -> {event_id: error}`: send each event's mail unless it was sent already
    (steps 1 to 3 of the module docstring). Returns the error of each event whose mail is not sent:
    PermanentError (dead-letter now) or TransientError (retry later); the others are sent (now or before)
    and left for `mark_mails_sent`."""
    notifier = notifier_of(context)
    settings = context.settings
    failed: dict[str, Exception] = {}
    mails: dict[str, Mail] = {}
    for event in events:
        try:
            mails[event.id] = render(event)
        except PermanentError as err:
            failed[event.id] = err
    lease = timedelta(seconds=settings.notification_send_lease_seconds)
    try:
        to_claim = [event for event in events if event.id in mails]
        claimed = await claim(context.sessions, to_claim, mails, lease, notifier.unrecorded)
    except Exception as err:  # e.g. a competing notifier won a race on a new row: all of them later
        return {**failed, **{event_id: TransientError(f"claim failed: {err}") for event_id in mails}}
    failed.update(claimed.failed)
    wave = _Wave(context, notifier, claimed, {event.id: event.attempt for event in events})
    await asyncio.gather(*(wave.send(event_id, mails[event_id]) for event_id in claimed.to_send))
    await record_failures(context.sessions, wave.failed, claimed)
    return {**failed, **wave.failed}


class _Wave:
    """The sends of one wave, concurrent over the pool; `failed`: the error of each mail not sent."""

    def __init__(
        self, context: ReactorContext, notifier: Notifier, claims: Claims, delivery_attempt: dict[str, int]
    ) -> None:
        self._context = context
        self._notifier = notifier
        self._claims = claims
        self._delivery_attempt = delivery_attempt
        self._waiting = set(claims.to_send)  # not started yet: their claims are renewed together
        self._owned = set(claims.to_send)
        self._renewing = asyncio.Lock()
        self.failed: dict[str, Exception] = {}

    async def send(self, event_id: str, mail: Mail) -> None:
        settings = self._context.settings
        async with self._notifier.pool.connection() as connection:
            await self._renew_if_due()
            self._waiting.discard(event_id)
            if event_id not in self._owned:
                self.failed[event_id] = TransientError(
                    f"claim of the mail for {event_id} lapsed before sending"
                )
                return
            try:
                await connection.send(mail)
            except SEND_FAILURES as err:
                error = classify(err, mail.recipient)
                if isinstance(error, TransientError) and (
                    self._delivery_attempt[event_id] >= settings.reactor_max_attempts
                ):
                    # The runtime dead-letters this delivery after its last attempt: give up here, so that
                    # the row says `failed` with the reason rather than `retrying` for good. Counted per
                    # delivery, not per row: a duplicate copy's failed sends must not use up this one's.
                    attempts = self._claims.to_send[event_id]
                    error = PermanentError(f"gave up after {attempts} send attempt(s): {error}")
                self.failed[event_id] = error
                return
        self._notifier.unrecorded[event_id] = self._claims.claimed_at[event_id]

    async def _renew_if_due(self) -> None:
        """A slow relay or a busy host: keep the mails not sent yet ours rather than let the claims lapse."""
        async with self._renewing:
            if utcnow() - self._claims.at >= self._claims.lease / 2 and self._waiting:
                still = await renew(self._context.sessions, sorted(self._waiting), self._claims)
                self._owned -= self._waiting - still


async def mark_mails_sent(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """Inside the wave's inbox transaction: its mails are `sent` (see `claims.mark_sent`)."""
    await mark_sent(session, [event.id for event in events])


async def mark_mail_sent(event: ReceivedEvent, session: AsyncSession) -> None:
    await mark_mails_sent([event], session)


def forget_recorded(event_ids: Sequence[str], context: ReactorContext) -> None:
    """After the wave's transaction committed: its mails are recorded `sent`, nothing to remember."""
    notifier = context.resources.get(NAME)
    if isinstance(notifier, Notifier):
        notifier.forget(
            event_ids,
            older_than=utcnow() - 10 * timedelta(seconds=context.settings.notification_send_lease_seconds),
        )


# The runtime's steps: prepare (outside the inbox transaction) sends, apply (inside it) marks `sent`,
# committed (after it) forgets what it remembered.
REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key, ORDER_CANCELLED_V1.routing_key),
    apply=mark_mail_sent,
    apply_batch=mark_mails_sent,
    prepare_batch=send_mails,
    # Replays to it are backfills only: events it never mailed about are mailed, the others skipped.
    cannot_reset="a mail cannot be unsent",
    committed=forget_recorded,
    # A mail whose event was applied is recorded `sent` in the same transaction: the claim finds it.
    prepare_skips_applied=True,
)
