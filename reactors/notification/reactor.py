"""The notification reactor: renders one mail per event and sends it over SMTP (aiosmtplib).

A mail cannot join a database transaction, so the send is made idempotent by event id around it:

1. `prepare_batch` claims the batch's events in `notifications` in one short transaction: a row already
   `sent` means the mail went out before (nothing to do); a row `sending` that was claimed less than
   `notification_send_lease_seconds` ago belongs to another notifier (retry later); otherwise this
   notifier claims it (status `sending`, claimed now).
2. It sends each mail over one SMTP connection kept open (`Mailer`). The RFC 5322 Message-ID is derived
   from the event id (`<event-id@order-saga>`). A mail whose claim has expired by then is not sent.
3. Right after each send, it marks that row `sent` in a short transaction of its own (not one for the
   batch, which would keep the first mails unmarked while the others are being sent).
4. The runtime then inserts the batch's inbox rows in its own transaction, and acks.

A redelivered event (duplicate publish, redelivery after a crash anywhere after step 3) finds `sent` and
sends nothing. The crash window that remains, stated honestly: if the process dies after the SMTP server
accepted the mail (step 2) but before step 3 commits (milliseconds), the event is redelivered, the claim
has expired after the lease, and the mail is sent a second time. That copy carries the same Message-ID, so
mail clients and many servers collapse the pair into one; no mail is ever lost to avoid it (at least once,
deduplicated everywhere but in that window). An SMTP outage is transient: the event is retried with backoff
and dead-lettered after `reactor_max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1, OrderCancelledV1, OrderShippedV1
from infra.models import utcnow
from infra.settings import Settings
from reactors.base import PermanentError, Reactor, ReactorContext, TransientError, unsupported
from reactors.notification.models import SENDING, SENT, Notification
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


def render(event: ReceivedEvent) -> tuple[str, str, str]:
    """(recipient, subject, body) of the mail for an event."""
    match event.data:
        case OrderShippedV1() as shipped:
            items = "\n".join(f"  {line.quantity} x {line.sku}" for line in shipped.lines)
            return (
                shipped.customer_email,
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
            return (
                cancelled.customer_email,
                f"Your order {cancelled.order_id} was cancelled",
                f"We are sorry: your order {cancelled.order_id} was cancelled.\n\n"
                f"Reason: {cancelled.reason.replace('_', ' ').lower()} ({cancelled.detail})\n\n"
                f"What we did:\n{what_we_did}",
            )
        case _:
            raise unsupported(NAME, event)


class Mailer:
    """One SMTP connection kept open for the reactor's mails (a process-wide resource), reconnected after a
    failure. One mail at a time: an SMTP session is a sequence of commands and replies."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def send(self, message: EmailMessage) -> None:
        async with self._lock:
            reused = self._client is not None and self._client.is_connected
            try:
                await self._send(message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                if not reused:
                    raise
                # The server may close an idle connection; a fresh one gets one more try.
                await self._send(message)

    async def _send(self, message: EmailMessage) -> None:
        if self._client is None or not self._client.is_connected:
            settings = self._settings
            client = aiosmtplib.SMTP(
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                # An empty value in the environment means "no login", like an absent one.
                username=settings.smtp_username or None,
                password=(settings.smtp_password.get_secret_value() or None)
                if settings.smtp_password
                else None,
                start_tls=settings.smtp_start_tls,
                use_tls=False,
                timeout=settings.smtp_timeout_seconds,
            )
            await client.connect()  # also STARTTLS and login, as configured
            self._client = client
        try:
            await self._client.send_message(message)
        except BaseException:
            await self._drop()  # the session's state is unknown: the next mail starts afresh
            raise

    async def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        async with self._lock:
            if self._client is not None and self._client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await self._client.quit(timeout=self._settings.smtp_timeout_seconds)
            await self._drop()


def mailer_of(context: ReactorContext) -> Mailer:
    mailer = context.resources.get(NAME)
    if not isinstance(mailer, Mailer):
        mailer = context.resources[NAME] = Mailer(context.settings)
    return mailer


async def prepare_batch(events: Sequence[ReceivedEvent], context: ReactorContext) -> dict[str, Exception]:
    """Send each event's mail unless it was sent already (see the module docstring): the claims of the whole
    batch in one transaction, then each mail, each marked `sent` in its own transaction right after its
    send, so that the window for a second mail stays that of one mail. Returns the errors by event id."""
    failed: dict[str, Exception] = {}
    mails: dict[str, tuple[str, str, str]] = {}
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
    for event_id in claimed.to_send:
        if utcnow() - claimed.at >= claimed.lease:  # another notifier may own it by now
            failed[event_id] = TransientError(f"claim of the mail for {event_id} expired before sending")
            continue
        recipient, subject, body = mails[event_id]
        try:
            await mailer.send(compose(context.settings, recipient, subject, body, message_id_for(event_id)))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            await _record_send_failure(context.sessions, event_id, err)
            if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
                failed[event_id] = PermanentError(f"recipient refused: {err}")
            else:
                failed[event_id] = TransientError(f"SMTP send failed: {err}")
            continue
        async with context.sessions() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(Notification.event_id == event_id)
                .values(status=SENT, sent_at=utcnow())
            )
    return failed


@dataclass
class _Claims:
    at: datetime
    lease: timedelta
    to_send: list[str] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)


async def _claim(
    events: Sequence[ReceivedEvent],
    mails: dict[str, tuple[str, str, str]],
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> _Claims:
    """Claim the events' mails in one transaction: a new row is claimed by inserting it; an existing one
    `sent` needs nothing; one claimed less than the lease ago without a recorded failure belongs to another
    notifier (retry later); any other is claimed again."""
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
                            "recipient": mails[event.id][0],
                            "subject": mails[event.id][1],
                            "body": mails[event.id][2],
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
                claims.to_send.append(event.id)
            elif row is None or row.status == SENT:
                continue
            elif row.last_error is None and claims.at - row.claimed_at < claims.lease:
                # A fresh claim without a recorded failure: another notifier is sending this very mail now.
                claims.failed[event.id] = TransientError(
                    f"mail for {event.id} is being sent by another notifier"
                )
            else:
                row.status = SENDING
                row.claimed_at = claims.at
                row.send_attempts += 1
                row.last_error = None
                claims.to_send.append(event.id)
    return claims


async def _record_send_failure(
    sessions: async_sessionmaker[AsyncSession], event_id: str, err: BaseException
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.event_id == event_id, Notification.status == SENDING)
            .values(last_error=f"{type(err).__name__}: {err}"[:2_000])  # releases the claim
        )


async def apply_batch(events: Sequence[ReceivedEvent], session: AsyncSession) -> None:
    """Inside the inbox transaction: every notification must be recorded as sent by now."""
    ids = [event.id for event in events]
    sent = set(
        await session.scalars(
            select(Notification.event_id).where(Notification.event_id.in_(ids), Notification.status == SENT)
        )
    )
    if missing := [event_id for event_id in ids if event_id not in sent]:
        raise TransientError(f"notification for {', '.join(missing)} is not recorded as sent")


async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
    await apply_batch([event], session)


def compose(settings: Settings, recipient: str, subject: str, body: str, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    return message


def _money(minor_units: int, currency: str) -> str:
    return f"{minor_units / 100:.2f} {currency}"


REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key, ORDER_CANCELLED_V1.routing_key),
    apply=apply,
    apply_batch=apply_batch,
    prepare_batch=prepare_batch,
)
