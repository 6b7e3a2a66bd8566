"""Reading the recovery pages' forms: the dead-letter selection and the replay selection, as the REST
bodies have them (`api.recovery_schemas`), from form fields (`datetime-local` inputs are UTC)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData

from api.console.deps import ConsoleAction
from api.recovery_schemas import ReplayIn
from reactors.dlq import Selection
from reactors.replay import ReplaySelection

_MOMENT = TypeAdapter(datetime)


def blank_is_none(value: Any) -> Any:
    """An empty form field is no value (a filter left blank), not an invalid one."""
    return None if isinstance(value, str) and not value.strip() else value


def time_bound(name: str, value: str | None, *, end: bool = False) -> datetime | None:
    """A `datetime-local` value (no zone: UTC), parsed as the REST API parses times; None when empty.

    `end`: the upper bound of a range, inclusive to the second (the inputs have `step="1"`): returned
    as the exclusive bound the queries take, the next second. Raises `RequestValidationError` (a
    console page, 422) when the value is not a time.
    """
    if not value or not value.strip():
        return None
    try:
        moment = _MOMENT.validate_python(value.strip())
    except ValidationError as err:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"not a time: {value!r} (YYYY-MM-DDTHH:MM:SS, UTC)",
                    "type": err.errors()[0]["type"],
                }
            ]
        ) from err
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=0) + timedelta(seconds=1) if end else moment


_FIELDS = ("group", "event_type", "reason", "order_id", "since", "until")


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
        since=time_bound("since", _text(form, "since")),
        until=time_bound("until", _text(form, "until"), end=True),
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
    """The replay the form describes, validated as `POST /replays` validates its body (`ReplayIn`), and
    each order id a UUID; raises `RequestValidationError` (shown as a console page, 422)."""
    ids = order_ids(_text(form, "order_ids"))
    for position, order_id in enumerate(ids):
        if not _is_uuid(order_id):
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "order_ids", position),
                        "msg": f"not an order id: {order_id!r}",
                        "type": "uuid_parsing",
                    }
                ]
            )
    try:
        body = ReplayIn(
            reactor=str(form.get("reactor", "")),
            mode=str(form.get("mode", "")),  # pydantic validates it
            order_ids=list(ids),
            event_type=_text(form, "event_type"),
            since=time_bound("since", _text(form, "since")),
            until=time_bound("until", _text(form, "until"), end=True),
        )
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from err
    return body.selection()


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def actor(action: ConsoleAction) -> str:
    """Who acts, as the ledger and the replays record it."""
    return f"console:{action.principal.name if action.principal else '?'}"
