"""The saga's Temporal history (and its steps in flight) as timeline entries (pure; see timeline.entries)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.converter import PayloadConverter

from activities.saga import COMPENSATION_NAMES
from observability.tracing import trace_id_of
from timeline.entries import Source, TimelineEntry, clip, elapsed_ms

LOCAL_ACTIVITY_MARKER = "core_local_activity"
CANCEL_UPDATE = "cancel"
# The TracingInterceptor's Temporal header: the trace context the workflow was started in.
TRACING_HEADER = "_tracer-data"
SAGA_ACTOR = "saga"


@dataclass
class _Step:
    name: str
    scheduled_at: datetime
    started_at: datetime | None = None
    attempt: int = 1


@dataclass
class _HistoryReader:
    steps: dict[int, _Step] = field(default_factory=dict)  # by the scheduled event's id
    started_at: datetime | None = None
    updates: dict[str, str] = field(default_factory=dict)  # update id -> update name
    entries: list[TimelineEntry] = field(default_factory=list)

    def add(self, event: HistoryEvent, kind: str, summary: str, **details: Any) -> None:
        self.entries.append(
            TimelineEntry(
                at=_time(event.event_time),
                source=Source.WORKFLOW,
                actor=SAGA_ACTOR,
                kind=kind,
                summary=summary,
                seq=event.event_id,
                **details,
            )
        )


_Handler = Callable[[_HistoryReader, HistoryEvent], None]


def history_entries(events: Iterable[HistoryEvent]) -> list[TimelineEntry]:
    """The saga's history as timeline entries (workflow-task bookkeeping left out)."""
    reader = _HistoryReader()
    for event in events:
        handler = _HANDLERS.get(event.event_type)
        if handler is not None:
            handler(reader, event)
    return reader.entries


def _started(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.workflow_execution_started_event_attributes
    reader.started_at = _time(event.event_time)
    traceparent = _traceparent(attributes.header.fields.get(TRACING_HEADER))
    reader.add(
        event,
        "workflow.started",
        f"saga started ({attributes.workflow_type.name})",
        attempt=attributes.attempt or None,
        detail=f"task queue {attributes.task_queue.name}",
        trace_id=trace_id_of(traceparent),
    )


def _ended(kind: str, verb: str) -> _Handler:
    def handle(reader: _HistoryReader, event: HistoryEvent) -> None:
        detail = None
        if event.HasField("workflow_execution_completed_event_attributes"):
            result = _decode(event.workflow_execution_completed_event_attributes.result.payloads)
            detail = _describe_result(result)
        elif event.HasField("workflow_execution_failed_event_attributes"):
            detail = _failure_text(event.workflow_execution_failed_event_attributes.failure)
        elif event.HasField("workflow_execution_terminated_event_attributes"):
            detail = event.workflow_execution_terminated_event_attributes.reason or None
        reader.add(
            event,
            kind,
            f"saga {verb}",
            duration_ms=elapsed_ms(reader.started_at, _time(event.event_time)),
            detail=detail,
        )

    return handle


def _activity_scheduled(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.activity_task_scheduled_event_attributes
    name = attributes.activity_type.name
    reader.steps[event.event_id] = _Step(name, _time(event.event_time))
    reader.add(event, f"{_step_kind(name)}.scheduled", f"{name} scheduled", step=name)


def _activity_started(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.activity_task_started_event_attributes
    step = reader.steps.get(attributes.scheduled_event_id)
    if step is None:
        return
    step.started_at, step.attempt = _time(event.event_time), attributes.attempt or 1
    previous = _failure_text(attributes.last_failure) if attributes.HasField("last_failure") else None
    reader.add(
        event,
        f"{_step_kind(step.name)}.started",
        f"{step.name} started" + (f" (attempt {step.attempt})" if step.attempt > 1 else ""),
        step=step.name,
        attempt=step.attempt,
        detail=f"attempt {step.attempt - 1} failed: {previous}" if previous else None,
    )


def _activity_ended(outcome: str) -> _Handler:
    def handle(reader: _HistoryReader, event: HistoryEvent) -> None:
        attributes = getattr(event, f"activity_task_{outcome}_event_attributes")
        step = reader.steps.get(attributes.scheduled_event_id)
        if step is None:
            return
        at = _time(event.event_time)
        detail: str | None = None
        if outcome == "completed":
            detail = _describe_result(_decode(attributes.result.payloads))
        elif outcome in ("failed", "timed_out"):
            detail = _failure_text(attributes.failure)
        duration = elapsed_ms(step.started_at, at) if step.started_at else elapsed_ms(step.scheduled_at, at)
        verb = outcome.replace("_", " ")
        reader.add(
            event,
            f"{_step_kind(step.name)}.{outcome}",
            f"{step.name} {verb}" + (f" after {step.attempt} attempts" if step.attempt > 1 else ""),
            step=step.name,
            attempt=step.attempt,
            duration_ms=duration,
            detail=detail,
        )

    return handle


def _activity_cancel_requested(reader: _HistoryReader, event: HistoryEvent) -> None:
    scheduled = event.activity_task_cancel_requested_event_attributes.scheduled_event_id
    step = reader.steps.get(scheduled)
    if step is not None:
        kind = f"{_step_kind(step.name)}.cancel_requested"
        reader.add(event, kind, f"{step.name}: cancel requested", step=step.name)


def _marker(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != LOCAL_ACTIVITY_MARKER or "data" not in attributes.details:
        return
    data = _decode(attributes.details["data"].payloads)
    if not isinstance(data, dict):
        return
    name = str(data.get("activity_type", "local activity"))
    completed_at = _proto_json_time(data.get("complete_time")) or _time(event.event_time)
    scheduled_at = _proto_json_time(data.get("original_schedule_time"))
    attempt = int(data.get("attempt") or 1)
    failed = attributes.HasField("failure")
    detail = (
        _failure_text(attributes.failure)
        if failed
        else _describe_result(_decode(attributes.details["result"].payloads))
        if "result" in attributes.details
        else None
    )
    reader.entries.append(
        TimelineEntry(
            at=completed_at,
            source=Source.WORKFLOW,
            actor=SAGA_ACTOR,
            kind="local_step.failed" if failed else "local_step.completed",
            summary=f"{name} {'failed' if failed else 'completed'} (local)"
            + (f" after {attempt} attempts" if attempt > 1 else ""),
            step=name,
            attempt=attempt,
            # The schedule time is the workflow's clock, the completion the worker's: never below zero.
            duration_ms=max(elapsed_ms(scheduled_at, completed_at) or 0.0, 0.0) if scheduled_at else None,
            detail=detail,
            seq=event.event_id,
        )
    )


def _status(reader: _HistoryReader, event: HistoryEvent) -> None:
    fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    if "OrderStatus" in fields:
        status = _decode([fields["OrderStatus"]])
        reader.add(event, "status", f"status {status}")


def _update_accepted(reader: _HistoryReader, event: HistoryEvent) -> None:
    request = event.workflow_execution_update_accepted_event_attributes.accepted_request
    name = request.input.name
    reader.updates[request.meta.update_id] = name
    argument = _decode(request.input.args.payloads)
    reason = argument.get("reason") if isinstance(argument, dict) else None
    if name == CANCEL_UPDATE:
        reader.add(event, "cancel.requested", "cancel requested (update)", detail=reason)
    else:
        reader.add(event, "update.accepted", f"update {name} accepted")


def _update_completed(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.workflow_execution_update_completed_event_attributes
    name = reader.updates.get(attributes.meta.update_id, "update")
    if attributes.outcome.HasField("failure"):
        reader.add(
            event, f"{name}.refused", f"{name} refused", detail=_failure_text(attributes.outcome.failure)
        )
        return
    result = _decode(attributes.outcome.success.payloads)
    detail = str(result.get("reason")) if isinstance(result, dict) and result.get("reason") else None
    if name == CANCEL_UPDATE:
        reader.add(event, "cancel.accepted", "cancel accepted", detail=detail)
    else:
        reader.add(event, "update.completed", f"update {name} completed", detail=detail)


def _workflow_cancel_requested(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.workflow_execution_cancel_requested_event_attributes
    reader.add(
        event,
        "cancel.requested",
        "workflow cancel requested",
        detail=attributes.cause or (f"by {attributes.identity}" if attributes.identity else None),
    )


def _signaled(reader: _HistoryReader, event: HistoryEvent) -> None:
    name = event.workflow_execution_signaled_event_attributes.signal_name
    reader.add(event, "signal", f"signal {name}")


def _task_failed(reader: _HistoryReader, event: HistoryEvent) -> None:
    attributes = event.workflow_task_failed_event_attributes
    reader.add(
        event, "workflow.task_failed", "workflow task failed", detail=_failure_text(attributes.failure)
    )


_HANDLERS: Mapping[int, _Handler] = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: _started,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: _ended("workflow.completed", "completed"),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: _ended("workflow.failed", "failed"),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: _ended("workflow.canceled", "ended cancelled"),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: _ended("workflow.terminated", "terminated"),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: _ended("workflow.timed_out", "timed out"),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: _ended(
        "workflow.continued_as_new", "continued"
    ),
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: _activity_scheduled,
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: _activity_started,
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: _activity_ended("completed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: _activity_ended("failed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: _activity_ended("timed_out"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: _activity_ended("canceled"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED: _activity_cancel_requested,
    EventType.EVENT_TYPE_MARKER_RECORDED: _marker,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: _status,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: _update_accepted,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED: _update_completed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED: _workflow_cancel_requested,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: _signaled,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: _task_failed,
}


def pending_step_entries(pending: Iterable[PendingActivityInfo], now: datetime) -> list[TimelineEntry]:
    """Steps in flight (from the workflow's description): the history records an attempt only when the step
    ends, so a step that is failing and retrying right now shows here, with its attempt and last error."""
    entries = []
    for info in pending:
        name = info.activity_type.name
        failure = _failure_text(info.last_failure) if info.HasField("last_failure") else None
        if failure:
            at = (
                _time(info.last_attempt_complete_time) if info.HasField("last_attempt_complete_time") else now
            )
            next_at = (
                _time(info.next_attempt_schedule_time).isoformat()
                if info.HasField("next_attempt_schedule_time")
                else "not scheduled"
            )
            summary = f"{name} attempt {max(info.attempt - 1, 1)} failed, retrying"
            detail = f"{failure}; next attempt {info.attempt} at {next_at}"
            kind = f"{_step_kind(name)}.retrying"
        else:
            at = _time(info.last_started_time) if info.HasField("last_started_time") else now
            summary, detail, kind = (
                f"{name} running (attempt {info.attempt})",
                None,
                f"{_step_kind(name)}.running",
            )
        entries.append(
            TimelineEntry(
                at=at,
                source=Source.WORKFLOW,
                actor=SAGA_ACTOR,
                kind=kind,
                summary=summary,
                step=name,
                attempt=info.attempt,
                detail=detail,
                seq=1_000_000_000,  # after the history's events at the same instant
            )
        )
    return entries


# --- helpers ---------------------------------------------------------------------------------------------


def _step_kind(name: str) -> str:
    return "compensation" if name in COMPENSATION_NAMES else "step"


def _time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _proto_json_time(value: object) -> datetime | None:
    """A protobuf Timestamp as the local-activity marker stores it: {"seconds": s, "nanos": n}."""
    if not isinstance(value, dict) or "seconds" not in value:
        return None
    return datetime.fromtimestamp(int(value["seconds"]) + int(value.get("nanos") or 0) / 1e9, UTC)


def _decode(payloads: Sequence[Any]) -> Any:
    """The first value of a payload list, or None when it cannot be read (binary, encrypted...)."""
    try:
        values = PayloadConverter.default.from_payloads(list(payloads))
    except Exception:
        return None
    return values[0] if values else None


def _describe_result(result: object) -> str | None:
    """What a step or the saga answered, in short: its status, failure and detail fields, if any."""
    if not isinstance(result, dict):
        return None
    parts = [
        f"{key}={result[key]}"
        for key in ("status", "failure_reason", "failure_detail", "compensations_run")
        if result.get(key) not in (None, "", [], ())
    ]
    if result.get("detail"):  # a step's own word: a reference, a tracking number, "released 2"
        parts.append(str(result["detail"]))
    return clip(", ".join(parts)) or None


def _failure_text(failure: Failure) -> str:
    kind = failure.application_failure_info.type if failure.HasField("application_failure_info") else ""
    text = f"{kind}: {failure.message}" if kind else failure.message
    if failure.HasField("cause") and failure.cause.message and failure.cause.message != failure.message:
        text += f" (cause: {failure.cause.message})"
    return clip(text) or "failed"


def _traceparent(payload: Any) -> str | None:
    carrier = _decode([payload]) if payload is not None else None
    value = carrier.get("traceparent") if isinstance(carrier, dict) else None
    return value if isinstance(value, str) else None
