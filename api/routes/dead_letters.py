"""/dead-letters: each reactor's DLQ, by message or by failure group; inspect, redrive (`admin` scope)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import Admin, Recoveries
from api.problems import problem_responses
from api.recovery_schemas import (
    DeadLetterDetailOut,
    DeadLetterList,
    DeadLetterOut,
    FailureGroupOut,
    FailureGroups,
    RedriveIn,
    RedriveOut,
)
from reactors.dlq import Selection, group

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])

ReactorName = Annotated[
    str, Path(max_length=64, description="The reactor's name.", examples=["notification"])
]


@router.get(
    "/{reactor}",
    summary="A reactor's dead letters",
    description="Oldest first, each with its event type, order, reason, attempts, age and failure group; "
    "filtered by failure group, event type, reason (a substring, any case), order and the time it was "
    "dead-lettered (`since` inclusive, `until` exclusive). Read in place: nothing moves. Needs `admin`.",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def list_dead_letters(
    caller: Admin,
    recovery: Recoveries,
    reactor: ReactorName,
    group_id: Annotated[str | None, Query(alias="group", max_length=12)] = None,
    event_type: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=500)] = None,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> DeadLetterList:
    selection = Selection(
        group=group_id, event_type=event_type, reason=reason, order_id=order_id, since=since, until=until
    )
    found = await recovery.dead_letters(reactor, selection)
    now = datetime.now(UTC)
    return DeadLetterList(
        reactor=reactor,
        total=len(found.letters),
        truncated=found.truncated,
        items=[DeadLetterOut.of(letter, now) for letter in found.letters[:limit]],
    )


@router.get(
    "/{reactor}/groups",
    summary="A reactor's dead letters by failure",
    description="Dead letters whose reasons differ only in ids and numbers form one group (like "
    "ServicePulse's failure groups), largest first; redrive a whole group with its id. Needs `admin`.",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def failure_groups(caller: Admin, recovery: Recoveries, reactor: ReactorName) -> FailureGroups:
    found = await recovery.dead_letters(reactor)
    return FailureGroups(
        reactor=reactor,
        total=len(found.letters),
        truncated=found.truncated,
        groups=[FailureGroupOut.of(failure) for failure in group(found.letters)],
    )


@router.get(
    "/{reactor}/messages/{message_id}",
    summary="One dead letter: headers and payload",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def dead_letter(
    caller: Admin,
    recovery: Recoveries,
    reactor: ReactorName,
    message_id: Annotated[str, Path(max_length=64)],
) -> DeadLetterDetailOut:
    return DeadLetterDetailOut.of(await recovery.dead_letter(reactor, message_id), datetime.now(UTC))


@router.post(
    "/{reactor}/redrive",
    summary="Redrive dead letters to their reactor",
    description="Sends the chosen dead letters back to that reactor's own queue (no other reactor sees "
    "them), with a fresh attempt count; each is published with a broker confirm before it leaves the "
    "DLQ, and the reactor's inbox still drops an event it applied already. Choose by ids, a failure "
    "`group` and/or filters, or `all`; `dry_run` only counts (show that count for confirmation), then "
    "send its `matched_ids` as `confirmed_ids` (or its count as `confirmed_count`): only those are "
    "redriven, later arrivals are reported in `skipped`. One call works on the DLQ as it was when it "
    "started, each message once. 409 `dead-letter-queue-busy` while another operator reads this DLQ. "
    "Needs `admin`.",
    responses=problem_responses(400, 401, 403, 404, 409, 422, 503),
)
async def redrive(caller: Admin, recovery: Recoveries, reactor: ReactorName, body: RedriveIn) -> RedriveOut:
    done = await recovery.redrive(
        reactor,
        body.selection(),
        actor=f"api:{caller.name}",
        dry_run=body.dry_run,
        confirmed=body.confirmed(),
    )
    return RedriveOut.of(reactor, done)
