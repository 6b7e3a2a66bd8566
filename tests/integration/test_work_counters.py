"""The benchmark's work counters (observability/counters.py): what they count, in a process of their own
(they listen at class level, for every engine of the process, so they stay out of the test process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest

from reactors.notification.smtp_sink import SmtpSink
from tests.support import ROOT, free_port

pytestmark = pytest.mark.integration

PROBE = """
import asyncio, json, sys
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from infra.settings import load_settings
from observability.counters import start_work_counters

async def main() -> None:
    settings = load_settings(database_url=sys.argv[1], work_counters_dir=sys.argv[2])
    counters = start_work_counters(settings, "probe")
    engine = create_async_engine(settings.database_url, pool_pre_ping=False)
    for _ in range(2):  # the first one connects and prepares; the second is the one measured
        before = dict(counters.counts)
        async with engine.begin() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.execute(text("SELECT 2"))
    await engine.dispose()
    counters.dump()
    print(json.dumps({key: counters.counts[key] - before.get(key, 0) for key in counters.counts}))

asyncio.run(main())
"""


def test_one_transaction_of_two_statements_is_one_transaction_and_four_round_trips(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, url, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    delta = json.loads(done.stdout.strip().splitlines()[-1])
    # BEGIN, two executions of statements prepared in the first round, COMMIT.
    assert delta == {
        "db_transactions": 1,
        "db_statements": 2,
        "db_round_trips": 4,
        "db_checkouts": 1,
        "db_connects": 0,
    }
    (dumped,) = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    assert dumped["component"] == "probe"
    assert dumped["counts"]["db_transactions"] == 2


async def test_the_sink_counts_sessions_replies_and_mails() -> None:
    sink = SmtpSink("127.0.0.1", free_port())
    sink.start()
    started = sink.counts()  # the controller's own probe at start is a session too
    try:
        async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port) as client:
            await client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
    finally:
        sink.stop()
    # Greeting, EHLO, MAIL, RCPT, DATA, the end of data, QUIT: one final reply each.
    counted = {key: value - started[key] for key, value in sink.counts().items()}
    assert counted == {"smtp_connections": 1, "smtp_replies": 7, "smtp_mails": 1}
