"""Where the timeline comes from: small adapters that read the saga's history from the Temporal server and
the order's rows from the outbox and the delivery ledger, then hand them to the pure merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from infra import models
from infra.db import open_database
from infra.settings import Settings
from messaging.models import OutboxEvent
from orchestrator.client import connect_temporal
from reactors.models import DeliveryRecord
from timeline.entries import Timeline, TimelineEntry
from timeline.history import history_entries, pending_step_entries
from timeline.records import DeliveryView, OutboxView, build_timeline, view_of

# Bound of each Temporal call: a timeline without the history beats a request that hangs.
TEMPORAL_RPC_TIMEOUT = timedelta(seconds=10)


async def workflow_entries(client: Client, workflow_id: str) -> tuple[list[TimelineEntry], list[str]]:
    """The saga's history (from the server, so worker restarts do not matter) and its steps in flight."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        history = await handle.fetch_history(rpc_timeout=TEMPORAL_RPC_TIMEOUT)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            # Temporal unreachable: the outbox and the ledger still tell part of the story.
            return [], [f"the saga's history could not be read from Temporal: {err}"]
        return [], [f"Temporal has no history for {workflow_id} (not started yet, or past its retention)"]
    entries = history_entries(history.events)
    try:
        description = await handle.describe(rpc_timeout=TEMPORAL_RPC_TIMEOUT)
    except RPCError as err:
        return entries, [f"steps in flight unknown: {err}"]
    pending = description.raw_description.pending_activities
    return entries + pending_step_entries(pending, datetime.now(UTC)), []


async def outbox_views(session: AsyncSession, order_id: str) -> list[OutboxView]:
    rows = await session.scalars(
        select(OutboxEvent).where(OutboxEvent.subject == order_id).order_by(OutboxEvent.created_at)
    )
    return [view_of(OutboxView, row) for row in rows]


async def delivery_views(session: AsyncSession, order_id: str) -> list[DeliveryView]:
    rows = await session.scalars(
        select(DeliveryRecord).where(DeliveryRecord.subject == order_id).order_by(DeliveryRecord.id)
    )
    return [view_of(DeliveryView, row) for row in rows]


async def load_timeline(
    sessions: async_sessionmaker[AsyncSession], client: Client, order_id: str
) -> Timeline | None:
    """The order's timeline, or None when there is no such order."""
    async with sessions() as session:
        workflow_id = await session.scalar(
            select(models.Order.workflow_id).where(models.Order.id == order_id)
        )
        if workflow_id is None:
            return None
        outbox = await outbox_views(session, order_id)
        deliveries = await delivery_views(session, order_id)
    history, warnings = await workflow_entries(client, workflow_id)
    return build_timeline(
        order_id, workflow_id, history=history, outbox=outbox, deliveries=deliveries, warnings=warnings
    )


async def timeline_for(settings: Settings, order_id: str) -> Timeline | None:
    """Open the database and connect to Temporal, read the order's timeline, close (CLIs)."""
    database = open_database(settings)
    try:
        client = await connect_temporal(settings, wait_seconds=0)
        return await load_timeline(database.sessions, client, order_id)
    finally:
        await database.dispose()
