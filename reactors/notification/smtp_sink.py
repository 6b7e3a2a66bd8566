"""An embedded SMTP sink (aiosmtpd) for the local stack and the tests: accepts every mail, delivers none.

`python -m entrypoints.smtp_sink` listens on SMTP_HOST:SMTP_PORT and stores each mail in the
Maildir at SMTP_SINK_MAILDIR (default var/mail); tests use `SmtpSink` in-process and read `.messages` (and
`.envelopes`, the RCPT TO addresses of each). For the tests, a sink can also behave like a stricter relay:
`smtputf8=False` leaves SMTPUTF8 out of its EHLO reply (and refuses a MAIL ... SMTPUTF8), and `rcpt_reply`
answers RCPT TO with a reply of its choosing (a 550 or a 451) instead of accepting. `counts()` gives the
sessions, final replies and mails so far (the benchmark's SMTP round trips).
"""

from __future__ import annotations

import logging
import mailbox
import threading
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)


# Given the RCPT TO address, the reply to send instead of accepting it ("550 5.1.1 no such user"), or None.
RcptReply = Callable[[str], str | None]


class _Handler:
    def __init__(self, sink: SmtpSink, rcpt_reply: RcptReply | None) -> None:
        self._sink = sink
        self._rcpt_reply = rcpt_reply

    async def handle_RCPT(  # aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self._rcpt_reply is not None and (reply := self._rcpt_reply(address)) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        message = message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        self._sink.store(message, list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class _CountingSMTP(SMTP):
    """Counts sessions and final reply lines: the sink offers no PIPELINING, so each reply is a round trip."""

    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_made(self, transport: Any) -> None:
        self._sink.count("smtp_connections")
        super().connection_made(transport)

    async def push(self, status: Any) -> None:
        line = status.encode() if isinstance(status, str) else bytes(status)
        if line[3:4] != b"-":  # the last line of a (multi-line) reply
            self._sink.count("smtp_replies")
        await super().push(status)


class _CountingController(Controller):
    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        self._sink = sink
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self._sink, self.handler, **self.SMTP_kwargs)


class SmtpSink:
    """Runs aiosmtpd in its own thread (its own event loop); safe to read `.messages` from any thread."""

    def __init__(
        self,
        host: str,
        port: int,
        maildir: Path | None = None,
        *,
        smtputf8: bool = True,
        rcpt_reply: RcptReply | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.smtputf8 = smtputf8
        self.rcpt_reply = rcpt_reply
        self._controller: Controller | None = None
        self._maildir = mailbox.Maildir(maildir, create=True) if maildir is not None else None
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._envelopes: list[list[str]] = []
        self._counts: dict[str, int] = {"smtp_connections": 0, "smtp_replies": 0, "smtp_mails": 0}

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def counts(self) -> dict[str, int]:
        """Sessions opened, final reply lines sent (one per client round trip) and mails received, so far."""
        with self._lock:
            return dict(self._counts)

    def store(self, message: EmailMessage, recipients: list[str] | None = None) -> None:
        with self._lock:
            self._counts["smtp_mails"] += 1
            self._messages.append(message)
            self._envelopes.append(recipients or [])
            if self._maildir is not None:
                self._maildir.add(message)
        log.info("mail to %s: %s (%s)", message["To"], message["Subject"], message["Message-ID"])

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def envelopes(self) -> list[list[str]]:
        """The RCPT TO addresses of each mail in `.messages`, in the same order."""
        with self._lock:
            return [list(recipients) for recipients in self._envelopes]

    def start(self) -> None:
        """Listen (again: a stopped sink can be started anew, keeping what it received)."""
        if self._controller is None:
            self._controller = _CountingController(
                self,
                _Handler(self, self.rcpt_reply),
                hostname=self.host,
                port=self.port,
                enable_SMTPUTF8=self.smtputf8,
            )
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.stop()
