"""The worker process is SIGKILLed mid-saga and restarted: the saga completes, nothing happens twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from domain.model import OrderStatus
from infra import models
from infra.db import Database
from infra.settings import Settings
from orchestrator.client import place_order
from tests.support import ROOT, add_product, order_command, order_snapshot, product

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@asynccontextmanager
async def worker_process(
    settings: Settings, temporal_address: str, task_queue: str, payment_latency_ms: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The real worker entrypoint in its own process, configured only through its environment."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "SIMULATED_PAYMENT_LATENCY_MS": str(payment_latency_ms),
        "WORKER_SHUTDOWN_GRACE_SECONDS": "5",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "entrypoints.worker", cwd=ROOT, env=env
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def wait_for_pending_charge(database: Database, order_id: str, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while True:
            async with database.sessions() as session:
                status = await session.scalar(
                    select(models.Payment.status).where(models.Payment.order_id == order_id)
                )
            if status == "pending":
                return
            await asyncio.sleep(0.05)


async def test_worker_killed_while_charging_resumes_without_double_effects(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]
) -> None:
    settings, db = database
    address = temporal_env.client.service_client.config.target_host
    task_queue = "orders-kill-" + uuid.uuid4().hex[:8]
    await add_product(db.sessions, "SKU-A", on_hand=5)
    command = order_command(items={"SKU-A": 2})

    async with worker_process(settings, address, task_queue, payment_latency_ms=10_000) as doomed:
        handle = await place_order(db.sessions, temporal_env.client, task_queue, command)
        await wait_for_pending_charge(db, command.order_id)
        doomed.kill()  # SIGKILL: no graceful shutdown, the charge is in flight
        assert await doomed.wait() == -signal.SIGKILL

    async with worker_process(settings, address, task_queue, payment_latency_ms=0) as revived:
        result = await asyncio.wait_for(handle.result(), 90)
        assert revived.returncode is None
    assert revived.returncode == 0  # SIGTERM: a graceful shutdown

    assert result.status == OrderStatus.SHIPPED
    snapshot = await order_snapshot(db.sessions, command.order_id)
    assert snapshot["history"] == ["PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "SHIPPED"]
    assert snapshot["reservations"] == [("SKU-A", 2, "consumed")]
    assert snapshot["payments"] == [("charge", 2_500, "succeeded")]
    assert len(snapshot["shipments"]) == 1  # type: ignore[arg-type]
    stock = await product(db.sessions, "SKU-A")
    assert (stock.on_hand, stock.reserved) == (3, 0)
    history = await handle.fetch_history()
    charge_attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert max(charge_attempts) == 2  # the killed attempt timed out and was retried once
