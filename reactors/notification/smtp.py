"""The notification reactor's SMTP side: recipient addresses, a small pool of kept-open connections (the
mails themselves come from `template`), and which send failures are permanent.

Addresses. A recipient is mailed in the form every relay accepts: with an ASCII (IDNA) domain whenever its
local part is ASCII (`ada@bücher.example` goes out as `ada@xn--bcher-kva.example`); only a non-ASCII local
part (`jürgen@example.com`) needs the SMTPUTF8 extension, and such a mail is sent only to a server that
offers it (aiosmtplib checks the EHLO reply before MAIL FROM).

Failures (`classify`). Permanent, dead-lettered at once: a 5xx reply to MAIL, RCPT or DATA (the server
refuses this mail), a recipient that needs SMTPUTF8 where the server does not offer it, an address that
cannot be put on an SMTP command line. Transient, retried: 4xx replies, connection errors, timeouts, a
dropped connection, and every failure while connecting (connect, EHLO, STARTTLS, AUTH), which is about the
relay or its configuration, not this mail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiosmtplib
import email_validator

from infra.settings import Settings
from reactors.base import PermanentError, TransientError
from reactors.notification.template import MailTemplate


def mailable_address(address: str) -> str:
    """`mailable_address("ada@bücher.example") -> "ada@xn--bcher-kva.example"`: the address with an ASCII
    (IDNA) domain when its local part is ASCII; otherwise email-validator's normalized form, which needs
    SMTPUTF8 (`needs_smtputf8`).

    Uses email-validator (as the API does when it accepts the address), without DNS lookups. Raises
    PermanentError for an address it refuses: no retry can make it mailable.
    """
    try:
        checked = email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError as err:
        raise PermanentError(f"recipient {address!r} cannot be mailed: {err}") from err
    return checked.ascii_email or checked.normalized


def needs_smtputf8(address: str) -> bool:
    """Whether mailing a `mailable_address` needs the SMTPUTF8 extension (a non-ASCII local part)."""
    return not address.isascii()


class ConnectFailed(Exception):
    """Connecting to the relay failed (connect, EHLO, STARTTLS or AUTH): about the relay, not the mail."""


@dataclass(frozen=True)
class Mail:
    """A mail to send: the recipient (as mailed: a `mailable_address`), subject, body and Message-ID."""

    recipient: str
    subject: str
    body: str
    message_id: str


class Connection:
    """One SMTP connection kept open, reconnected after a failure. One mail at a time: without PIPELINING
    (aiosmtplib does not implement it, and aiosmtpd does not offer it) an SMTP transaction is four round
    trips in sequence (MAIL, RCPT, DATA, the message), so concurrency comes from several connections."""

    def __init__(self, settings: Settings, template: MailTemplate) -> None:
        self._settings = settings
        self._template = template
        self._client: aiosmtplib.SMTP | None = None

    async def send(self, mail: Mail) -> None:
        """Send `mail` (see `MailerPool.send` for what it raises). A connection kept open that turns out
        closed (the server restarted, or dropped it while idle) gets one more try on a fresh one."""
        reused = self._client is not None and self._client.is_connected
        try:
            await self._send(mail)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            if not reused:
                raise
            await self._send(mail)

    async def _send(self, mail: Mail) -> None:
        client = await self._connected()
        eight_bit = client.supports_extension("8bitmime")
        envelope = self._template.render(
            mail.recipient, mail.subject, mail.body, mail.message_id, eight_bit=eight_bit
        )
        # The options `send_message` would use: SMTPUTF8 for a non-ASCII recipient (refused with
        # SMTPNotSupported where the server lacks it), BODY=8BITMIME wherever the server offers it.
        options = (["SMTPUTF8"] if envelope.smtputf8 else []) + (["BODY=8BITMIME"] if eight_bit else [])
        try:
            await client.sendmail(envelope.sender, [envelope.recipient], envelope.data, mail_options=options)
        except BaseException:
            self.drop()  # the session's state is unknown: the next mail starts afresh
            raise

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            # An empty value in the environment means "no login", like an absent one.
            username=settings.smtp_username or None,
            password=(settings.smtp_password.get_secret_value() or None) if settings.smtp_password else None,
            start_tls=settings.smtp_start_tls,
            use_tls=False,
            timeout=settings.smtp_timeout_seconds,
        )
        try:
            await client.connect()  # also EHLO, STARTTLS and login, as configured
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            client.close()
            raise ConnectFailed(f"{type(err).__name__}: {err}") from err
        self._client = client
        return client

    def drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._client is not None and self._client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await self._client.quit(timeout=self._settings.smtp_timeout_seconds)
        self.drop()


class MailerPool:
    """`notification_smtp_connections` SMTP connections kept open for the reactor's mails (a process-wide
    resource), opened on first use and reopened after a failure; `send` takes an idle one, so that up to
    that many mails are in flight at once.

    `send` raises ConnectFailed (from the aiosmtplib or OS error) when it cannot connect, and aiosmtplib's
    errors (`SMTPResponseException` with the reply code, `SMTPNotSupported`...) or ValueError (a header
    value with a line break, an address that cannot be put on a command line) when the mail itself fails."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        template = MailTemplate(settings.smtp_sender)
        self._all = [Connection(settings, template) for _ in range(settings.notification_smtp_connections)]
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        for connection in self._all:
            self._idle.put_nowait(connection)

    @property
    def size(self) -> int:
        return len(self._all)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """An idle connection, the caller's alone until it leaves the block (waits for one if none is)."""
        connection = await self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put_nowait(connection)

    async def send(self, mail: Mail) -> None:
        async with self.connection() as connection:
            await connection.send(mail)

    async def aclose(self) -> None:
        for connection in self._all:
            await connection.aclose()


# What a failed send may raise; anything else is a bug, left to the runtime (retried as transient).
SEND_FAILURES: tuple[type[BaseException], ...] = (
    ConnectFailed,
    aiosmtplib.SMTPException,
    OSError,
    TimeoutError,
    ValueError,
)


def classify(err: BaseException, recipient: str) -> PermanentError | TransientError:
    """The runtime's verdict on a failed send to `recipient` (see the module docstring), with a reason that
    says why."""
    where = f"mail to {recipient}"
    match err:
        case ConnectFailed():
            return TransientError(f"{where}: cannot connect to the SMTP server: {err}")
        case aiosmtplib.SMTPNotSupported() if needs_smtputf8(recipient):
            return PermanentError(
                f"{where}: the address needs SMTPUTF8 (non-ASCII local part), "
                f"which the SMTP server does not offer ({err})"
            )
        case aiosmtplib.SMTPRecipientsRefused():
            codes = [refused.code for refused in err.recipients]
            detail = "; ".join(f"{refused.code} {refused.message}" for refused in err.recipients)
            if codes and all(500 <= code < 600 for code in codes):
                return PermanentError(f"{where}: recipient refused by the SMTP server: {detail}")
            return TransientError(f"{where}: recipient deferred by the SMTP server: {detail}")
        case aiosmtplib.SMTPResponseException() if 500 <= err.code < 600:
            return PermanentError(f"{where}: refused by the SMTP server: {err.code} {err.message}")
        case ValueError() if not isinstance(err, aiosmtplib.SMTPException):
            return PermanentError(f"{where}: cannot be sent: {err}")
        case _:
            return TransientError(f"{where}: SMTP send failed: {type(err).__name__}: {err}")
