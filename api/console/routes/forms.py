"""Reading the recovery pages' forms: the dead-letter selection and the replay selection, as the REST
bodies have them (`api.recovery_schemas`), from form fields (`datetime-local` inputs are UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.datastructures import FormData

from api.console.deps import ConsoleAction
from reactors.dlq import Selection
from reactors.replay import ReplaySelection

_FIELDS = ("group", "event_type", "reason", "order_id", "since", "until")


def utc(value: str | None) -> datetime | None:
    """A `datetime-local` value (no zone) read as UTC; None when empty or not a time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


def dead_letter_selection(form: FormData) -> tuple[Selection, bool]:
    """The selection the form describes, and whether it asked for every dead letter (`all`)."""
    ids = [value for value in form.getlist("message_ids") if isinstance(value, str) and value]
    selection = Selection(
        message_ids=frozenset(ids) if ids else None,
        group=_text(form, "group"),
        event_type=_text(form, "event_type"),
        reason=_text(form, "reason"),
        order_id=_text(form, "order_id"),
        since=utc(_text(form, "since")),
        until=utc(_text(form, "until")),
    )
    return selection, form.get("all") == "1"


def selection_fields(form: FormData) -> list[tuple[str, str]]:
    """The form's selection fields as (name, value) pairs, to carry into the confirmation form."""
    pairs = [("message_ids", v) for v in form.getlist("message_ids") if isinstance(v, str) and v]
    pairs += [(name, v) for name in (*_FIELDS, "all") if isinstance(v := form.get(name), str) and v]
    return pairs


def order_ids(text: str | None) -> tuple[str, ...]:
    """Order ids typed one per line, or separated by spaces or commas."""
    return tuple(part for part in re.split(r"[\s,]+", text or "") if part)


def replay_selection(form: FormData) -> ReplaySelection:
    return ReplaySelection(
        order_ids=order_ids(_text(form, "order_ids")),
        event_type=_text(form, "event_type"),
        since=utc(_text(form, "since")),
        until=utc(_text(form, "until")),
    )


def actor(action: ConsoleAction) -> str:
    """Who acts, as the ledger and the replays record it."""
    return f"console:{action.principal.name if action.principal else '?'}"
