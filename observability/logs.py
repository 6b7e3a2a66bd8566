"""Logging for every process: `configure_logging(settings)`, text or JSON lines with correlation ids.

Each record carries the order id, workflow id, event id and trace id where known: from `log_context` (bound
by the API, the activity interceptor, the relay and the reactor runtime), from the workflow/activity info
Temporal's loggers attach (`temporal_workflow`, `temporal_activity`), and from the current span.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from domain.model import workflow_id_for
from infra.settings import Settings
from observability import tracing

CORRELATION_FIELDS = ("order_id", "workflow_id", "event_id", "trace_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(correlation)s"
_WORKFLOW_ID_PREFIX = workflow_id_for("")

_order_id: ContextVar[str | None] = ContextVar("log_order_id", default=None)
_workflow_id: ContextVar[str | None] = ContextVar("log_workflow_id", default=None)
_event_id: ContextVar[str | None] = ContextVar("log_event_id", default=None)


@contextmanager
def log_context(
    *, order_id: str | None = None, workflow_id: str | None = None, event_id: str | None = None
) -> Iterator[None]:
    """Tag every record logged inside (this task and what it awaits) with these ids."""
    if workflow_id and not order_id:
        order_id = order_id_of(workflow_id)
    tokens = [
        (var, var.set(value))
        for var, value in ((_order_id, order_id), (_workflow_id, workflow_id), (_event_id, event_id))
        if value
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_log_context(*, order_id: str | None = None, event_id: str | None = None) -> None:
    """Tag the rest of the current task (an HTTP request) with these ids; they end with the task."""
    if order_id:
        _order_id.set(order_id)
    if event_id:
        _event_id.set(event_id)


def order_id_of(workflow_id: str) -> str | None:
    return workflow_id[len(_WORKFLOW_ID_PREFIX) :] if workflow_id.startswith(_WORKFLOW_ID_PREFIX) else None


def correlation_of(record: logging.LogRecord) -> dict[str, str]:
    """The ids known for this record: `extra` wins, then the log context, Temporal's info, the span."""
    temporal = getattr(record, "temporal_activity", None) or getattr(record, "temporal_workflow", None)
    temporal_workflow_id = temporal.get("workflow_id") if isinstance(temporal, dict) else None
    workflow_id = _workflow_id.get() or (
        temporal_workflow_id if isinstance(temporal_workflow_id, str) else None
    )
    found = {
        "order_id": _order_id.get() or (order_id_of(workflow_id) if workflow_id else None),
        "workflow_id": workflow_id,
        "event_id": _event_id.get(),
        "trace_id": tracing.current_trace_id(),
    }
    for field in CORRELATION_FIELDS:
        explicit = getattr(record, field, None)
        if isinstance(explicit, str) and explicit:
            found[field] = explicit
    return {field: value for field, value in found.items() if value}


class CorrelationFilter(logging.Filter):
    """Puts the correlation ids on the record: as attributes, and as `correlation` text (text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = correlation_of(record)
        for field, value in fields.items():
            setattr(record, field, value)
        record.correlation = "".join(f" {field}={value}" for field, value in fields.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CORRELATION_FIELDS:
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_handler(settings: Settings) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings) -> None:
    """The root logger of this process: level and format from the settings. Every entrypoint calls it."""
    logging.basicConfig(level=settings.log_level, handlers=[log_handler(settings)], force=True)
