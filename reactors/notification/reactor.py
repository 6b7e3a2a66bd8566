"""The notification reactor: renders one mail per event and sends it over SMTP (aiosmtplib).

A mail cannot join a database transaction, so the send is made idempotent by event id around it:

1. `prepare` claims the event in `notifications` in a short transaction: a row already `sent` means the
   mail went out before (nothing to do); a row `sending` that was claimed less than
   `notification_send_lease_seconds` ago belongs to another notifier (retry later); otherwise this
   notifier claims it (status `sending`, claimed now).
2. It sends the mail. The RFC 5322 Message-ID is derived from the event id (`<event-id@order-saga>`).
3. It marks the row `sent` in a second short transaction.
4. The runtime then inserts the inbox row in its own transaction, and acks.

A redelivered event (duplicate publish, redelivery after a crash anywhere after step 3) finds `sent` and
sends nothing. The crash window that remains, stated honestly: if the process dies after the SMTP server
accepted the mail (step 2) but before step 3 commits (milliseconds), the event is redelivered, the claim
has expired after the lease, and the mail is sent a second time. That copy carries the same Message-ID, so
mail clients and many servers collapse the pair into one; no mail is ever lost to avoid it (at least once,
deduplicated everywhere but in that window). An SMTP outage is transient: the event is retried with backoff
and dead-lettered after `reactor_max_attempts`.
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import ReceivedEvent
from contracts.orders import ORDER_CANCELLED_V1, ORDER_SHIPPED_V1, OrderCancelledV1, OrderShippedV1
from infra.models import utcnow
from infra.settings import Settings
from reactors.base import PermanentError, Reactor, ReactorContext, TransientError, unsupported
from reactors.notification.models import SENDING, SENT, Notification

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


async def prepare(event: ReceivedEvent, context: ReactorContext) -> None:
    """Send the event's mail unless it was sent already (see the module docstring)."""
    recipient, subject, body = render(event)
    now = utcnow()
    lease = timedelta(seconds=context.settings.notification_send_lease_seconds)
    async with context.sessions() as session, session.begin():
        row = await session.get(Notification, event.id, with_for_update=True)
        if row is not None and row.status == SENT:
            return
        # A fresh claim without a recorded failure: another notifier is sending this very mail right now.
        if row is not None and row.last_error is None and now - row.claimed_at < lease:
            raise TransientError(f"mail for {event.id} is being sent by another notifier")
        if row is None:
            row = Notification(
                event_id=event.id,
                event_type=event.type,
                order_id=event.subject,
                recipient=recipient,
                subject=subject,
                body=body,
                message_id=message_id_for(event.id),
                status=SENDING,
                send_attempts=0,
                created_at=now,
            )
            session.add(row)
        row.status = SENDING
        row.claimed_at = now
        row.send_attempts += 1
        row.last_error = None
    try:
        await send_mail(context.settings, recipient, subject, body, message_id_for(event.id))
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
        async with context.sessions() as session, session.begin():
            failed = await session.get(Notification, event.id, with_for_update=True)
            if failed is not None and failed.status == SENDING:
                failed.last_error = f"{type(err).__name__}: {err}"[:2_000]  # releases the claim
        if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
            raise PermanentError(f"recipient refused: {err}") from err
        raise TransientError(f"SMTP send failed: {err}") from err
    async with context.sessions() as session, session.begin():
        sent = await session.get(Notification, event.id, with_for_update=True)
        if sent is not None:
            sent.status = SENT
            sent.sent_at = utcnow()


async def apply(event: ReceivedEvent, session: AsyncSession) -> None:
    """Inside the inbox transaction: the notification must be recorded as sent by now."""
    row = await session.get(Notification, event.id)
    if row is None or row.status != SENT:
        raise TransientError(f"notification for {event.id} is not recorded as sent")


async def send_mail(settings: Settings, recipient: str, subject: str, body: str, message_id: str) -> None:
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        # An empty value in the environment means "no login", like an absent one.
        username=settings.smtp_username or None,
        password=(settings.smtp_password.get_secret_value() or None) if settings.smtp_password else None,
        start_tls=settings.smtp_start_tls,
        use_tls=False,
        timeout=settings.smtp_timeout_seconds,
    )


def _money(minor_units: int, currency: str) -> str:
    return f"{minor_units / 100:.2f} {currency}"


REACTOR = Reactor(
    name=NAME,
    routing_keys=(ORDER_SHIPPED_V1.routing_key, ORDER_CANCELLED_V1.routing_key),
    apply=apply,
    prepare=prepare,
)
