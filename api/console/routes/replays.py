"""Replays: choose events (orders, type, time range) and ONE reactor, see the dry run's counts, confirm,
then follow the progress, through `api.recovery`, the code the REST API uses."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Query
from starlette.responses import RedirectResponse, Response

from api.console.deps import Action, Page, is_htmx
from api.console.routes.forms import actor, order_ids, replay_selection
from api.deps import Recoveries
from api.errors import ReactorNotFound
from contracts.orders import EVENT_TYPES
from reactors.models import ReplayMode
from reactors.registry import REACTORS
from reactors.replay import ReplayError

router = APIRouter(prefix="/console/replays", include_in_schema=False)

ReplayId = Annotated[str, Path(max_length=36)]
MODES = (ReplayMode.BACKFILL, ReplayMode.REAPPLY)


def _choices() -> dict[str, Any]:
    return {
        "reactors": [(r.name, r.reset is not None, r.cannot_reset) for r in REACTORS],
        "event_types": sorted(EVENT_TYPES),
        "modes": MODES,
    }


@router.get("")
async def replays(
    view: Page,
    recovery: Recoveries,
    order_id: Annotated[list[str] | None, Query(max_length=100)] = None,
    reactor: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The replay form (an order page links here with its id) and the latest replays."""
    return view.render(
        "replays.html",
        recent=await recovery.replays(limit=20),
        prefill={"order_ids": "\n".join(order_ids(" ".join(order_id or ()))), "reactor": reactor},
        **_choices(),
    )


@router.post("/plan")
async def plan(action: Action, recovery: Recoveries) -> Response:
    """The dry run's counts, and the button that starts the replay."""
    form = await action.request.form()
    reactor, mode = str(form.get("reactor", "")), str(form.get("mode", ""))
    try:
        found = await recovery.plan(reactor, mode, replay_selection(form))
    except (ReplayError, ReactorNotFound) as err:
        return action.render("_replay_plan.html", plan=None, error=str(err))
    fields = [(name, str(value)) for name, value in form.multi_items() if name != "csrf_token"]
    return action.render("_replay_plan.html", plan=found, error=None, fields=fields)


@router.post("/start")
async def start(action: Action, recovery: Recoveries, background: BackgroundTasks) -> Response:
    form = await action.request.form()
    reactor, mode = str(form.get("reactor", "")), str(form.get("mode", ""))
    try:
        recorded = await recovery.record_replay(reactor, mode, replay_selection(form), actor=actor(action))
    except (ReplayError, ReactorNotFound) as err:
        return action.render("_replay_plan.html", plan=None, error=str(err))
    background.add_task(recovery.publish, recorded.id)
    action.audit("replay", replay_id=recorded.id, reactor=reactor, mode=mode, events=recorded.total)
    location = f"/console/replays/{recorded.id}"
    if is_htmx(action.request):
        return Response(status_code=HTTPStatus.NO_CONTENT, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=HTTPStatus.SEE_OTHER)


@router.get("/{replay_id}")
async def replay_page(view: Page, recovery: Recoveries, replay_id: ReplayId) -> Response:
    try:
        found = await recovery.replay(replay_id)
    except ReplayError as err:
        return view.render("recovery_missing.html", status=HTTPStatus.NOT_FOUND, detail=str(err))
    return view.render("replay.html", replay=found)


@router.get("/{replay_id}/live")
async def replay_live(view: Page, recovery: Recoveries, replay_id: ReplayId) -> Response:
    """The replay's progress (the page polls it until every event is settled)."""
    try:
        found = await recovery.replay(replay_id)
    except ReplayError as err:
        return view.render("recovery_missing.html", status=HTTPStatus.NOT_FOUND, detail=str(err))
    return view.render("_replay_progress.html", replay=found)


@router.post("/{replay_id}/resume")
async def resume(
    action: Action, recovery: Recoveries, replay_id: ReplayId, background: BackgroundTasks
) -> Response:
    found = await recovery.replay(replay_id)
    background.add_task(recovery.publish, replay_id)
    action.audit("replay-resume", replay_id=replay_id)
    return action.render("_replay_progress.html", replay=found)
