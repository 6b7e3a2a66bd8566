"""/replays: published outbox events sent again to ONE reactor; dry run, start, progress, resume
(`admin` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Response, status

from api.deps import Admin, Recoveries
from api.problems import problem_responses
from api.recovery_schemas import ReplayIn, ReplayList, ReplayOut, ReplayPlanOut

router = APIRouter(prefix="/replays", tags=["replays"])

ReplayId = Annotated[str, Path(max_length=36, description="The replay's id, as `POST /replays` answered.")]


@router.post(
    "/plan",
    summary="Dry run of a replay",
    description="What replaying these events to this reactor would do, with counts: events taken (by "
    "type, over how many orders), applied before, to apply, to skip, to reset. Changes nothing. 409 for a "
    "re-apply the reactor refuses; 422 when nothing (or more than 10,000 events) matches. Needs `admin`.",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def plan_replay(caller: Admin, recovery: Recoveries, body: ReplayIn) -> ReplayPlanOut:
    return ReplayPlanOut.of(await recovery.plan(body.reactor, body.mode, body.selection()))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Replay events to one reactor",
    description="Records the replay and publishes its events, in the background, to the reactor's own "
    "queue (never the shared exchange). A backfill goes through the reactor's inbox; a re-apply resets "
    "each event's earlier effects and applies it again, once, in one transaction. Follow it at "
    "`Location`. Every replayed delivery shows in the ledger and the order's timeline. Needs `admin`.",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}, "required": True}}},
        **problem_responses(400, 401, 403, 404, 409, 422),
    },
)
async def start_replay(
    caller: Admin, recovery: Recoveries, body: ReplayIn, background: BackgroundTasks, response: Response
) -> ReplayOut:
    recorded = await recovery.record_replay(
        body.reactor, body.mode, body.selection(), actor=f"api:{caller.name}"
    )
    background.add_task(recovery.publish, recorded.id)
    response.headers["Location"] = f"/replays/{recorded.id}"
    return ReplayOut.of(recorded)


@router.get(
    "",
    summary="Latest replays",
    description="Newest first, with their progress. Needs `admin`.",
    responses=problem_responses(401, 403, 404, 422),
)
async def list_replays(
    caller: Admin,
    recovery: Recoveries,
    reactor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ReplayList:
    return ReplayList(items=[ReplayOut.of(found) for found in await recovery.replays(reactor, limit)])


@router.get(
    "/{replay_id}",
    summary="A replay's progress",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_replay(caller: Admin, recovery: Recoveries, replay_id: ReplayId) -> ReplayOut:
    return ReplayOut.of(await recovery.replay(replay_id))


@router.post(
    "/{replay_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Resume a replay",
    description="Publishes, in the background, the events of a replay whose publishing stopped (state "
    "`failed`, or a process that died) that were not published yet. Needs `admin`.",
    responses=problem_responses(401, 403, 404, 422),
)
async def resume_replay(
    caller: Admin, recovery: Recoveries, replay_id: ReplayId, background: BackgroundTasks
) -> ReplayOut:
    found = await recovery.replay(replay_id)
    background.add_task(recovery.publish, replay_id)
    return ReplayOut.of(found)
