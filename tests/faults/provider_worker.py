"""The real saga worker, with a simulated payment provider whose record outlives the worker's process.

    python -m tests.faults.provider_worker JOURNAL_FILE

Same settings, workflow, activities and shutdown as `python -m entrypoints.worker`; the only difference is
the payment gateway: `JournaledPaymentGateway` keeps what the provider did (charges and refunds, by
idempotency key) in JOURNAL_FILE, one JSON line each, written and fsynced *inside* the provider call, before
its answer travels back (the second half of the simulated latency). A worker SIGKILLed in that window leaves
a charge the provider made and the database does not know of yet, like a real provider whose answer was lost;
the next worker reads the journal back, so the provider still knows that key. The fault checker reconciles the
journal with the database's payments.

One more test card: `tok_answer_lost` is charged by the provider on its first attempt (once per key) but its
answer never arrives (a transient error every time), so the saga's retries run out after the money moved.
And `tok_late` charges like `tok_ok`, only LATE_CHARGE_SECONDS later (still within the step's timeout): long
enough for the saga to be cancelled and compensated meanwhile, so that the charge lands on a closed order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.worker import Worker

from activities.providers import ChargeRequest, RefundRequest, SimulatedPaymentGateway
from domain.errors import TransientProviderError
from entrypoints.bootstrap import saga_activities
from entrypoints.process import run_until_signalled
from infra.db import open_database
from infra.settings import Settings, load_settings
from observability.metrics import StepMetricsInterceptor, temporal_runtime
from orchestrator.client import connect_temporal
from orchestrator.workflow import OrderWorkflow

log = logging.getLogger("tests.faults.provider_worker")
TOKEN_ANSWER_LOST = "tok_answer_lost"
TOKEN_LATE = "tok_late"
LATE_CHARGE_SECONDS = 6.0


class JournaledPaymentGateway(SimulatedPaymentGateway):
    """The simulated provider, its charges and refunds appended to a journal that survives restarts."""

    def __init__(self, journal: Path, latency_seconds: float = 0.0) -> None:
        super().__init__(0.0)
        self._journal = journal
        self._half_latency = latency_seconds / 2
        self._read_up_to = 0
        self._catch_up()

    def _catch_up(self) -> None:
        """Read what the journal gained since the last call. The journal is the provider's record, shared by
        every worker replica: a charge one replica made (and died before recording) is known to the others."""
        if not self._journal.exists():
            return
        with self._journal.open("rb") as journal:
            journal.seek(self._read_up_to)
            chunk = journal.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self._read_up_to += len(complete)
        for line in complete.decode().splitlines():
            entry = json.loads(line)
            record: Any = (ChargeRequest if entry["kind"] == "charge" else RefundRequest)(**entry["request"])
            (self.charges if entry["kind"] == "charge" else self.refunds).setdefault(entry["key"], record)

    async def find_charge(self, idempotency_key: str) -> str | None:
        self._catch_up()
        return await super().find_charge(idempotency_key)

    def _append(self, kind: str, key: str, amount: int, request: dict[str, Any]) -> None:
        line = json.dumps({"kind": kind, "key": key, "amount": amount, "request": request}) + "\n"
        with self._journal.open("a") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())

    async def charge(self, request: ChargeRequest) -> str:
        if request.token == TOKEN_ANSWER_LOST:
            self._catch_up()
            if request.idempotency_key not in self.charges:
                self.charges[request.idempotency_key] = request
                self._append("charge", request.idempotency_key, request.amount, asdict(request))
            raise TransientProviderError("charged, but the provider's answer was lost")
        if request.token == TOKEN_LATE:
            await asyncio.sleep(LATE_CHARGE_SECONDS)
            request = replace(request, token="tok_ok")
        await asyncio.sleep(self._half_latency)  # the request travelling to the provider
        self._catch_up()
        known = request.idempotency_key in self.charges
        reference = await super().charge(request)  # raises when declined or (flaky) unavailable
        if not known:
            self._append("charge", request.idempotency_key, request.amount, asdict(request))
        await asyncio.sleep(self._half_latency)  # the answer travelling back: a kill here loses it
        return reference

    async def refund(self, request: RefundRequest) -> str:
        self._catch_up()
        known = request.idempotency_key in self.refunds
        reference = await super().refund(request)
        if not known:
            self._append("refund", request.idempotency_key, request.amount, asdict(request))
        return reference


async def serve(settings: Settings, journal: Path, stop: asyncio.Event) -> None:
    database = open_database(settings)
    try:
        client = await connect_temporal(settings, runtime=temporal_runtime(settings))
        gateway = JournaledPaymentGateway(journal, settings.simulated_payment_latency_ms / 1000)
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[OrderWorkflow],
            activities=saga_activities(settings, database.sessions, gateway=gateway),
            graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
            interceptors=[StepMetricsInterceptor()],
        )
        async with worker:
            log.info("worker (journaled provider %s) polling %r", journal, settings.temporal_task_queue)
            await stop.wait()
    finally:
        await database.dispose()


def main() -> None:
    import sys

    journal = Path(sys.argv[1])
    settings = load_settings()
    run_until_signalled(
        settings,
        "worker",
        lambda stop: serve(settings, journal, stop),
        metrics_port=settings.worker_metrics_port,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as entrypoints.worker: skip finalization under the SDK's native threads


if __name__ == "__main__":
    main()
