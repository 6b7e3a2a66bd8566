"""What the Temporal Web UI shows of a saga, read back: activity summaries, statuses, current details."""

from __future__ import annotations

import json
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle, WorkflowHistory

from orchestrator import search_attributes


def activity_summaries(history: WorkflowHistory) -> list[str]:
    """The summary of every activity (scheduled task or local activity marker), in history order."""
    return [
        json.loads(event.user_metadata.summary.data)
        for event in history.events
        if event.event_type
        in (EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_MARKER_RECORDED)
        and event.user_metadata.HasField("summary")
    ]


def order_status_upserts(history: WorkflowHistory) -> list[str]:
    """Every `OrderStatus` value the workflow upserted, in order (the start's value excluded)."""
    name = search_attributes.ORDER_STATUS.name
    return [
        json.loads(fields[name].data)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and name
        in (
            fields
            := event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        )
    ]


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """The workflow's current details, as the Web UI asks for them (the SDK's built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(metadata.current_details)
