"""An embedded SMTP sink (aiosmtpd) for the local stack and the tests: accepts every mail, delivers none.

`python -m entrypoints.smtp_sink` listens on SMTP_HOST:SMTP_PORT and stores each mail in the
Maildir at SMTP_SINK_MAILDIR (default var/mail); tests use `SmtpSink` in-process and read `.messages`.
"""

from __future__ import annotations

import logging
import mailbox
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        message = message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        self._sink.store(message)
        return "250 Message accepted for delivery"


class SmtpSink:
    """Runs aiosmtpd in its own thread (its own event loop); safe to read `.messages` from any thread."""

    def __init__(self, host: str, port: int, maildir: Path | None = None) -> None:
        self.host, self.port = host, port
        self._controller: Controller | None = None
        self._maildir = mailbox.Maildir(maildir, create=True) if maildir is not None else None
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []

    def store(self, message: EmailMessage) -> None:
        with self._lock:
            self._messages.append(message)
            if self._maildir is not None:
                self._maildir.add(message)
        log.info("mail to %s: %s (%s)", message["To"], message["Subject"], message["Message-ID"])

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def start(self) -> None:
        """Listen (again: a stopped sink can be started anew, keeping what it received)."""
        if self._controller is None:
            self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.stop()
