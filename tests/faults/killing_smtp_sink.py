"""The SMTP sink, armed to SIGKILL a process right after it accepted (stored) a mail.

    python -m tests.faults.killing_smtp_sink PID_FILE

Same as `python -m entrypoints.smtp_sink`, except that once PID_FILE exists, the next mail the sink
stores makes it SIGKILL the process whose id the file holds (the notifier) and delete the file: the mail was
accepted, the notifier never learns it and never marks it `sent`, the documented crash window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from email.message import EmailMessage
from pathlib import Path

from infra.settings import load_settings
from observability.logs import configure_logging
from reactors.notification.smtp_sink import SmtpSink


class KillingSink(SmtpSink):
    def __init__(self, host: str, port: int, maildir: Path, pid_file: Path) -> None:
        super().__init__(host, port, maildir)
        self._pid_file = pid_file

    def store(self, message: EmailMessage, recipients: list[str] | None = None) -> None:
        super().store(message, recipients)
        with contextlib.suppress(FileNotFoundError):
            pid = int(self._pid_file.read_text())
            self._pid_file.unlink()
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    pid_file = Path(sys.argv[1])
    settings = load_settings()
    configure_logging(settings)
    sink = KillingSink(settings.smtp_host, settings.smtp_port, Path(settings.smtp_sink_maildir), pid_file)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    sink.start()
    try:
        stopped.wait()
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
