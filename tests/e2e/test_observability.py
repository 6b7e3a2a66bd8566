"""Seeing across the seam, end to end: the REAL Temporal dev server, PostgreSQL and RabbitMQ.

Each test runs the whole pipeline in process, wired as the entrypoints wire it: the API app, a worker from
`entrypoints.worker.build_worker` (with its step-metrics interceptor), the outbox relay and the three
reactors. It checks the per-order timeline (API and console script), the one-trace-id chain and /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from temporalio.runtime import Runtime
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from entrypoints.worker import build_worker
from infra.db import Database
from infra.settings import Settings
from messaging.models import OutboxEvent
from messaging.relay import OutboxRelay
from messaging.topology import Topology
from observability import tracing
from observability.metrics import serve_metrics, temporal_runtime
from orchestrator.client import connect_temporal
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.notification.smtp_sink import SmtpSink
from tests.e2e.conftest import FINAL_STATUSES, api_settings, auth, order_body
from tests.integration.conftest import EventStack, event_stack, eventually
from tests.integration.event_helpers import publish
from tests.support import add_product, free_port
from timeline.sources import load_timeline

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REACTOR_NAMES = ("notification", "loyalty", "analytics")


@dataclass
class Stack:
    http: httpx.AsyncClient
    settings: Settings
    database: Database
    events: EventStack
    worker: Worker
    relay: OutboxRelay

    async def place(self, **body: Any) -> str:
        payload = order_body({"SKU-A": 1}, **body)
        headers = {**auth("everything"), "Idempotency-Key": str(uuid.uuid4())}
        response = await self.http.post("/orders", json=payload, headers=headers)
        assert response.status_code == 202, response.text
        return str(response.json()["order_id"])

    async def final_status(self, order_id: str) -> str:
        async with asyncio.timeout(30):
            while True:
                response = await self.http.get(f"/orders/{order_id}", headers=auth("support"))
                status = str(response.json()["status"])
                if status in FINAL_STATUSES:
                    return status
                await asyncio.sleep(0.05)

    async def ledger_count(self, order_id: str, outcome: str) -> int:
        async with self.database.sessions() as session:
            rows = await session.scalars(
                select(DeliveryRecord.id).where(
                    DeliveryRecord.subject == order_id, DeliveryRecord.outcome == outcome
                )
            )
            return len(rows.all())

    async def settled(self, order_id: str, outcome: str, count: int) -> None:
        async def reached() -> bool:
            return await self.ledger_count(order_id, outcome) == count

        await eventually(reached, what=f"{count} x {outcome} for {order_id}")

    async def timeline(self, order_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/orders/{order_id}/timeline", headers=auth("support"))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def republish(self, order_id: str) -> None:
        """Publish the order's event once more, as a relay that lost its confirm would."""
        async with self.database.sessions() as session:
            row = (await session.scalars(select(OutboxEvent).where(OutboxEvent.subject == order_id))).one()
        body = json.dumps(row.envelope).encode()
        await publish(self.events, body=body, routing_key=row.routing_key, message_id=row.id)


@asynccontextmanager
async def running_stack(
    temporal_env: WorkflowEnvironment,
    database: tuple[Settings, Database],
    sink: SmtpSink,
    *,
    runtime: Runtime | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    base, db = database
    task_queue = "orders-observed-" + uuid.uuid4().hex[:8]
    settings = api_settings(base.database_url, temporal_env, task_queue, **overrides)
    # As the worker process connects: with tracing on, the client carries the tracing interceptor.
    client = await connect_temporal(settings, wait_seconds=0, runtime=runtime)
    worker = build_worker(client, settings, db)
    app = create_app(settings)
    async with (
        event_stack(settings, db, sink) as events,
        worker,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        events.settings = events.settings.model_copy(update={"metrics_refresh_seconds": 0.2})
        await events.start_reactors()
        relay = events.start_relay().component
        await add_product(db.sessions, "SKU-A", on_hand=50, unit_price=1_250)
        yield Stack(http, settings, db, events, worker, relay)


@pytest.fixture
async def stack(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database], smtp_sink: SmtpSink
) -> AsyncIterator[Stack]:
    async with running_stack(temporal_env, database, smtp_sink) as running:
        yield running


def of_kind(entries: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["kind"] == kind]


async def test_the_timeline_of_a_shipped_order_merges_saga_outbox_and_every_reactor(stack: Stack) -> None:
    order_id = await stack.place()
    assert await stack.final_status(order_id) == "SHIPPED"
    await stack.settled(order_id, DeliveryOutcome.PROCESSED, 3)
    await stack.republish(order_id)
    await stack.settled(order_id, DeliveryOutcome.DUPLICATE_IGNORED, 3)
    # The history comes from the server: with the worker gone, nothing is missing.
    await stack.worker.shutdown()

    timeline = await stack.timeline(order_id)
    entries = timeline["entries"]
    assert timeline["workflow_id"] == f"order-{order_id}" and timeline["warnings"] == []
    assert [entry["at"] for entry in entries] == sorted(entry["at"] for entry in entries)
    assert entries[0]["kind"] == "workflow.started"
    completed = [entry["step"] for entry in of_kind(entries, "step.completed")]
    assert completed == ["charge_payment", "create_shipment"]
    assert all(
        entry["duration_ms"] is not None and entry["attempt"] == 1
        for entry in of_kind(entries, "step.completed")
    )
    # The reserve is a local step since patch lean-saga, like the closing write.
    assert [entry["step"] for entry in of_kind(entries, "local_step.completed")] == [
        "reserve_inventory",
        "mark_order_shipped",
    ]
    assert len(of_kind(entries, "workflow.completed")) == 1

    [recorded] = of_kind(entries, "event.recorded")
    [published] = of_kind(entries, "event.published")
    assert recorded["summary"] == "order.shipped.v1 recorded in the outbox" and published["attempt"] == 1
    assert published["duration_ms"] is not None and "confirmed by the broker in" in published["detail"]
    kinds = [entry["kind"] for entry in entries]
    assert kinds.index("event.published") < kinds.index("delivery.received")
    for outcome in ("processed", "duplicate_ignored"):
        rows = of_kind(entries, f"delivery.{outcome}")
        assert sorted(entry["actor"] for entry in rows) == sorted(REACTOR_NAMES), outcome
        assert all(entry["event_id"] == recorded["event_id"] for entry in rows)
    assert all(entry["duration_ms"] is not None for entry in of_kind(entries, "delivery.processed"))
    assert "loyalty: order.shipped.v1 duplicate ignored" in {entry["summary"] for entry in entries}

    unknown = await stack.http.get(f"/orders/{uuid.uuid4()}/timeline", headers=auth("support"))
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    assert (await stack.http.get(f"/orders/{order_id}/timeline", headers=auth("shop"))).status_code == 403

    # The console script reads the same timeline through its own connections, and draws it.
    env = {
        **os.environ,
        "DATABASE_URL": stack.settings.database_url,
        "TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "TEMPORAL_NAMESPACE": stack.settings.temporal_namespace,
        "COLUMNS": "220",
    }
    script = Path(sys.executable).parent / "order-timeline"
    process = await asyncio.create_subprocess_exec(
        str(script), order_id, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    for expected in (
        f"Order {order_id}",
        "charge_payment completed",
        "order.shipped.v1 published",
        "analytics: order.shipped.v1 processed",
        "notification: order.shipped.v1 duplicate ignored",
    ):
        assert expected in text, expected


async def test_the_timeline_of_a_declined_order_shows_the_failed_step_and_the_compensations(
    stack: Stack,
) -> None:
    order_id = await stack.place(token="tok_declined")
    assert await stack.final_status(order_id) == "FAILED"
    await stack.settled(order_id, DeliveryOutcome.PROCESSED, 2)  # loyalty takes shipped orders only

    entries = (await stack.timeline(order_id))["entries"]
    [failed] = of_kind(entries, "step.failed")
    assert failed["step"] == "charge_payment" and failed["detail"].startswith("PAYMENT_DECLINED")
    compensations = [entry["step"] for entry in of_kind(entries, "compensation.completed")]
    assert compensations == ["refund_payment", "release_inventory"]
    statuses = [entry["summary"] for entry in of_kind(entries, "status")]
    assert statuses == ["status COMPENSATING", "status FAILED"]  # upserted where operators filter only
    assert [entry["step"] for entry in of_kind(entries, "local_step.completed")] == [
        "reserve_inventory",
        "mark_order_status",
        "close_order",
    ]
    kinds = [entry["kind"] for entry in entries]
    assert kinds.index("step.failed") < kinds.index("compensation.scheduled")
    assert of_kind(entries, "event.published")[0]["summary"].startswith("order.cancelled.v1 published")
    processed = sorted(entry["actor"] for entry in of_kind(entries, "delivery.processed"))
    assert processed == ["analytics", "notification"]

    catalog = await stack.http.get("/asyncapi.json")
    assert catalog.status_code == 200 and catalog.json()["asyncapi"] == "3.0.0"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test only, into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


async def test_one_trace_from_the_api_through_the_saga_and_the_broker_into_each_reactor(
    temporal_env: WorkflowEnvironment,
    database: tuple[Settings, Database],
    smtp_sink: SmtpSink,
    spans: InMemorySpanExporter,
) -> None:
    # The worker's activities and the reactors share this engine: one span per SQL statement.
    tracing.instrument_engine(database[1].engine)
    async with running_stack(temporal_env, database, smtp_sink) as stack:
        order_id = await stack.place()
        assert await stack.final_status(order_id) == "SHIPPED"
        await stack.settled(order_id, DeliveryOutcome.PROCESSED, 3)

        def named(name: str) -> list[ReadableSpan]:
            return [span for span in spans.get_finished_spans() if span.name == name]

        consumer_names = [f"{reactor} process order.shipped.v1" for reactor in REACTOR_NAMES]

        async def consumers_done() -> bool:
            return all(named(name) for name in consumer_names)

        await eventually(consumers_done, what="each reactor's consumer span ended")
        [request] = named("POST /orders")
        assert request.kind == SpanKind.SERVER and request.context is not None
        trace_id = request.context.trace_id
        chain = [
            "StartWorkflow:OrderWorkflow",
            "RunWorkflow:OrderWorkflow",
            *(f"RunActivity:{step}" for step in ("reserve_inventory", "charge_payment", "create_shipment")),
            "RunActivity:mark_order_shipped",  # the local activity that writes the outbox row
            "publish order.shipped.v1",
            *consumer_names,
        ]
        for name in chain:
            found = named(name)
            assert found, f"no span {name}"
            assert {span.context.trace_id for span in found if span.context} == {trace_id}, name
        [publish_span] = named("publish order.shipped.v1")
        assert publish_span.kind == SpanKind.PRODUCER
        every = spans.get_finished_spans()
        for name in consumer_names:
            [consumer] = named(name)
            assert consumer.kind == SpanKind.CONSUMER and consumer.parent is not None
            assert (
                publish_span.context is not None and consumer.parent.span_id == publish_span.context.span_id
            )
            sql = [
                span
                for span in every
                if span.kind == SpanKind.CLIENT
                and span.parent is not None
                and consumer.context is not None
                and span.parent.span_id == consumer.context.span_id
            ]
            assert sql, f"no SQL span under {name}"
            assert {span.context.trace_id for span in sql if span.context} == {trace_id}

        hex_trace = format(trace_id, "032x")
        async with stack.database.sessions() as session:
            row = (await session.scalars(select(OutboxEvent).where(OutboxEvent.subject == order_id))).one()
            ledger = (
                await session.scalars(select(DeliveryRecord).where(DeliveryRecord.subject == order_id))
            ).all()
        assert tracing.trace_id_of(row.traceparent) == hex_trace
        assert {record.trace_id for record in ledger} == {hex_trace}
        timeline = await load_timeline(stack.database.sessions, stack.worker.client, order_id)
        assert timeline is not None and timeline.entries[0].trace_id == hex_trace


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_orders_steps_publishes_and_reactor_outcomes(
    temporal_env: WorkflowEnvironment, database: tuple[Settings, Database], smtp_sink: SmtpSink
) -> None:
    sdk_port = free_port()
    sdk_settings = database[0].model_copy(update={"temporal_metrics_address": f"127.0.0.1:{sdk_port}"})
    runtime = temporal_runtime(sdk_settings)
    assert runtime is not None
    async with running_stack(temporal_env, database, smtp_sink, runtime=runtime) as stack:
        scrape: Callable[[], Awaitable[httpx.Response]] = lambda: stack.http.get("/metrics")  # noqa: E731
        before = samples((await scrape()).text)
        orders = {token: await stack.place(token=token) for token in ("tok_ok", "tok_flaky", "tok_declined")}
        assert [await stack.final_status(order) for order in orders.values()] == [
            "SHIPPED",
            "SHIPPED",
            "FAILED",
        ]

        async def all_applied() -> bool:
            return await stack.events.count(InboxMessage) == 8  # 3 + 3 shipped, 2 cancelled

        await eventually(all_applied, what="every reactor applied every event")
        await stack.republish(orders["tok_ok"])
        await publish(stack.events, body=b"not json", routing_key="order.shipped.v1")

        async def dead_lettered_and_counted() -> bool:
            # Each reactor dead-letters the poison on its own and reads its DLQ depth on its own timer.
            current = samples((await scrape()).text)
            for reactor in REACTOR_NAMES:
                if not await stack.events.ledger(reactor, DeliveryOutcome.DEAD_LETTERED):
                    return False
                if value(current, "reactor_dlq_messages", reactor=reactor) != 1:
                    return False
            return True

        await eventually(dead_lettered_and_counted, what="poison dead-lettered and the DLQ gauge updated")
        await stack.settled(orders["tok_ok"], DeliveryOutcome.DUPLICATE_IGNORED, 3)
        await stack.relay.refresh_gauges()
        response = await scrape()
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        after = samples(response.text)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert grew("orders_placed_total") == 3
        assert grew("orders_completed_total") == 2
        assert grew("orders_compensated_total", status="FAILED", reason="PAYMENT_DECLINED") == 1
        assert grew("saga_duration_seconds_count", outcome="shipped") == 2
        assert grew("saga_duration_seconds_count", outcome="failed") == 1
        assert grew("saga_step_failures_total", step="charge_payment", error="TransientProviderError") == 2
        assert grew("saga_step_failures_total", step="charge_payment", error="PAYMENT_DECLINED") == 1
        assert grew("saga_step_retries_total", step="charge_payment") == 2
        assert grew("saga_step_duration_seconds_count", step="reserve_inventory") == 3
        assert grew("outbox_published_events_total") == 3
        assert grew("outbox_publish_confirm_seconds_count") == 3
        assert ("outbox_pending_events", frozenset()) in after
        assert ("outbox_oldest_pending_age_seconds", frozenset()) in after
        for reactor, processed in (("notification", 3), ("loyalty", 2), ("analytics", 3)):
            assert grew("reactor_messages_total", reactor=reactor, outcome="processed") == processed
            assert grew("reactor_messages_total", reactor=reactor, outcome="duplicate") == 1
            assert grew("reactor_messages_total", reactor=reactor, outcome="dead") == 1
            assert grew("reactor_handling_seconds_count", reactor=reactor, outcome="processed") == processed
            assert value(after, "reactor_dlq_messages", reactor=reactor) == 1
        assert grew("reactor_event_age_seconds_count", reactor="loyalty", event_type="order.shipped.v1") == 3
        assert "# TYPE reactor_messages_total counter" in response.text  # where retries are counted too

        # The worker, relay and reactor processes serve the same registry on a port of their own.
        port = free_port()
        server = serve_metrics(stack.settings, port)
        assert server is not None and serve_metrics(stack.settings, 0) is None
        try:
            async with httpx.AsyncClient() as plain:
                own = await plain.get(f"http://127.0.0.1:{port}/metrics")
                sdk = await plain.get(f"http://127.0.0.1:{sdk_port}/metrics")
        finally:
            server.shutdown()
        assert value(samples(own.text), "orders_placed_total") >= 3
        # The Temporal SDK's own metrics, from the worker's runtime.
        assert sdk.status_code == 200
        sdk_names = {family.name for family in text_string_to_metric_families(sdk.text)}
        assert {"temporal_workflow_completed", "temporal_activity_execution_latency"} & sdk_names, sdk_names


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_outbox_gauges_count_pending_rows_and_the_oldest_age(
    database: tuple[Settings, Database],
) -> None:
    """No broker, no saga: two rows waiting in the outbox, the older one 30 s old."""
    settings, db = database
    async with db.sessions() as session, session.begin():
        for age_seconds in (30, 5):
            created = datetime.now(UTC) - timedelta(seconds=age_seconds)
            session.add(
                OutboxEvent(
                    id=str(uuid.uuid4()),
                    event_type="order.shipped.v1",
                    routing_key="order.shipped.v1",
                    subject=str(uuid.uuid4()),
                    envelope={},
                    status="pending",
                    attempts=0,
                    created_at=created,
                    available_at=created,
                )
            )
    await OutboxRelay(settings, db.sessions, Topology.from_settings(settings)).refresh_gauges()
    assert REGISTRY.get_sample_value("outbox_pending_events") == 2
    assert 30 <= (REGISTRY.get_sample_value("outbox_oldest_pending_age_seconds") or 0) < 60
