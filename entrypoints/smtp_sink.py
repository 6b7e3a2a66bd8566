"""`python -m entrypoints.smtp_sink`: a local SMTP sink on SMTP_HOST:SMTP_PORT that keeps every mail in the
Maildir at SMTP_SINK_MAILDIR (the local stack's stand-in for a mail relay). SIGINT/SIGTERM stop it."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from entrypoints.process import command_line
from infra.settings import load_settings
from observability.counters import start_work_counters
from observability.logs import configure_logging
from reactors.notification.smtp_sink import SmtpSink

log = logging.getLogger("entrypoints.smtp_sink")


def main() -> None:
    command_line("python -m entrypoints.smtp_sink", __doc__).parse_args()
    settings = load_settings()
    configure_logging(settings)
    sink = SmtpSink(settings.smtp_host, settings.smtp_port, Path(settings.smtp_sink_maildir))
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    start_work_counters(settings, "smtp", {"smtp": sink.counts})
    sink.start()
    log.info(
        "SMTP sink on %s:%d, storing mail in %s",
        settings.smtp_host,
        settings.smtp_port,
        settings.smtp_sink_maildir,
    )
    try:
        stopped.wait()
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
