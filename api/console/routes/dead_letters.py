"""Dead letters: each reactor's DLQ by failure group and by message, one message's headers and payload,
and redrives (one, selected, a group, or by filter) confirmed with their count, through `api.recovery`,
the code the REST API uses."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from api.console.deps import Action, Page
from api.console.routes.forms import actor, dead_letter_selection, selection_fields, time_bound
from api.deps import Recoveries
from api.errors import BrokerUnavailable, DeadLetterNotFound, DeadLetterQueueBusy, ReactorNotFound
from reactors.dlq import Confirmed, Selection, group
from reactors.registry import REACTORS

router = APIRouter(prefix="/console/dead-letters", include_in_schema=False)

SHOWN = 200  # dead letters listed on the page (the groups and the counts cover them all)
ReactorPath = Annotated[str, Path(max_length=64)]
Text = Annotated[str, Query(max_length=500)]


@router.get("")
async def dead_letters(
    view: Page,
    recovery: Recoveries,
    reactor: Annotated[str, Query(max_length=64)] = "",
    group_id: Annotated[str, Query(alias="group", max_length=12)] = "",
    event_type: Text = "",
    reason: Text = "",
    order_id: Text = "",
    since: Text = "",
    until: Text = "",
) -> Response:
    """One reactor's DLQ: its failure groups, the filter, the dead letters (the first `SHOWN`)."""
    names = [r.name for r in REACTORS]
    name = reactor if reactor in names else names[0]
    filters = {
        "group": group_id,
        "event_type": event_type,
        "reason": reason,
        "order_id": order_id,
        "since": since,
        "until": until,
    }
    selection = Selection(
        group=group_id or None,
        event_type=event_type or None,
        reason=reason or None,
        order_id=order_id or None,
        since=time_bound("since", since),
        until=time_bound("until", until, end=True),
    )
    try:
        everything = await recovery.dead_letters(name)
    except (BrokerUnavailable, DeadLetterQueueBusy) as err:
        return view.render("dead_letters.html", reactors=names, reactor=name, filters=filters, error=str(err))
    letters = [letter for letter in everything.letters if selection.matches(letter)]
    return view.render(
        "dead_letters.html",
        reactors=names,
        reactor=name,
        filters=filters,
        filtered=not selection.everything,
        groups=group(everything.letters),
        total=len(everything.letters),
        truncated=everything.truncated,
        letters=letters[:SHOWN],
        matching=len(letters),
        now=datetime.now(UTC),
        error=None,
    )


@router.get("/{reactor}/messages/{message_id}")
async def dead_letter(
    view: Page, recovery: Recoveries, reactor: ReactorPath, message_id: Annotated[str, Path(max_length=64)]
) -> Response:
    try:
        detail = await recovery.dead_letter(reactor, message_id)
    except DeadLetterQueueBusy as err:
        return view.render("recovery_missing.html", status=HTTPStatus.CONFLICT, detail=str(err))
    except (ReactorNotFound, DeadLetterNotFound, BrokerUnavailable) as err:
        return view.render("recovery_missing.html", status=HTTPStatus.NOT_FOUND, detail=str(err))
    return view.render("dead_letter.html", reactor=reactor, detail=detail, now=datetime.now(UTC))


@router.post("/{reactor}/confirm")
async def confirm_redrive(action: Action, recovery: Recoveries, reactor: ReactorPath) -> Response:
    """The dry run: how many dead letters the choice matches, and the button that redrives them."""
    form = await action.request.form()
    selection, everything = dead_letter_selection(form)
    if selection.everything != everything:
        return action.render(
            "_redrive_outcome.html", ok=False, message="Choose dead letters (tick some, a group or a filter)."
        )
    try:
        counted = await recovery.redrive(reactor, selection, actor=actor(action), dry_run=True)
    except (ReactorNotFound, BrokerUnavailable, DeadLetterQueueBusy) as err:
        return action.render("_redrive_outcome.html", ok=False, message=str(err))
    return action.render(
        "_redrive_confirm.html",
        reactor=reactor,
        count=counted.matched,
        described=selection.describe(),
        fields=selection_fields(form),
        confirmed_ids=" ".join(counted.matched_ids),
    )


@router.post("/{reactor}/redrive")
async def redrive(action: Action, recovery: Recoveries, reactor: ReactorPath) -> Response:
    """Redrive the dead letters the operator confirmed (the dry run's ids), to that reactor only; others
    the choice matches now arrived after the dry run and stay in the DLQ."""
    form = await action.request.form()
    selection, everything = dead_letter_selection(form)
    confirmed_ids = form.get("confirmed_ids")
    if selection.everything != everything or not isinstance(confirmed_ids, str):
        return action.render("_redrive_outcome.html", ok=False, message="Nothing chosen.")
    confirmed = Confirmed(message_ids=frozenset(confirmed_ids.split()))
    try:
        done = await recovery.redrive(
            reactor, selection, actor=actor(action), dry_run=False, confirmed=confirmed
        )
    except (ReactorNotFound, BrokerUnavailable, DeadLetterQueueBusy) as err:
        return action.render("_redrive_outcome.html", ok=False, message=str(err))
    action.audit(
        "redrive",
        reactor=reactor,
        selection=selection.describe(),
        count=len(done.redriven),
        skipped=len(done.skipped),
    )
    return action.render(
        "_redrive_outcome.html", ok=True, reactor=reactor, done=done, confirmed=len(confirmed_ids.split())
    )
