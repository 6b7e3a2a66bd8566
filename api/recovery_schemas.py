"""What the API accepts and answers about dead letters and event replays (`api.routes.dead_letters`,
`api.routes.replays`): pydantic models mapped from `reactors.dlq` and `reactors.replay`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from api.fields import CLOSED
from reactors.dlq import Confirmed, DeadLetter, DeadLetterDetail, FailureGroup, Redrive, Selection
from reactors.models import ReplayMode
from reactors.replay import ReplayPlan, ReplaySelection, ReplayStatus

Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ReplayModeIn = Literal["backfill", "reapply"]

# --- dead letters


class DeadLetterOut(BaseModel):
    message_id: str
    event_type: str = Field(description='CloudEvents type; "?" when the message does not say.')
    order_id: str = Field(description='The event\'s subject; "?" when the message does not say.')
    reason: str
    attempts: int = Field(description="Attempts made before it was dead-lettered.")
    dead_lettered_at: datetime | None
    age_seconds: float | None
    group: str = Field(description="Its failure group's id (see `/dead-letters/{reactor}/groups`).")
    redriven: int = Field(description="Times it was redriven before and came back.")

    @classmethod
    def of(cls, letter: DeadLetter, now: datetime) -> DeadLetterOut:
        return cls(
            message_id=letter.message_id,
            event_type=letter.event_type,
            order_id=letter.order_id,
            reason=letter.reason,
            attempts=letter.attempts,
            dead_lettered_at=letter.dead_lettered_at,
            age_seconds=letter.age_seconds(now),
            group=letter.group,
            redriven=letter.redriven,
        )


class DeadLetterList(BaseModel):
    reactor: str
    total: int = Field(description="Dead letters that match (the page shows the first `limit`).")
    truncated: bool = Field(description="The scan stopped at 10,000 messages: more may match.")
    items: list[DeadLetterOut]


class FailureGroupOut(BaseModel):
    id: str
    signature: str = Field(description="The reason with its ids and numbers masked.")
    count: int
    event_types: list[str]
    first_at: datetime | None
    last_at: datetime | None
    example_reason: str

    @classmethod
    def of(cls, group: FailureGroup) -> FailureGroupOut:
        return cls(
            id=group.id,
            signature=group.signature,
            count=group.count,
            event_types=list(group.event_types),
            first_at=group.first_at,
            last_at=group.last_at,
            example_reason=group.example_reason,
        )


class FailureGroups(BaseModel):
    reactor: str
    total: int
    truncated: bool
    groups: list[FailureGroupOut]


class DeadLetterDetailOut(BaseModel):
    letter: DeadLetterOut
    properties: dict[str, Any] = Field(description="AMQP properties: message id, type, content type...")
    headers: dict[str, Any] = Field(description="AMQP headers, as text and numbers.")
    payload: Any = Field(description="The body: decoded JSON, or text when it is not JSON.")

    @classmethod
    def of(cls, detail: DeadLetterDetail, now: datetime) -> DeadLetterDetailOut:
        return cls(
            letter=DeadLetterOut.of(detail.letter, now),
            properties=detail.properties,
            headers=detail.headers,
            payload=detail.payload,
        )


class RedriveIn(BaseModel):
    """Which dead letters to send back: ids, a failure group and/or filters (all must hold), or `all`."""

    model_config = CLOSED | {"json_schema_extra": {"examples": [{"group": "3f2a9c0d1b7e", "dry_run": True}]}}
    message_ids: Annotated[list[Id], Field(max_length=10_000)] | None = None
    group: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{12}$")] | None = None
    event_type: Id | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    order_id: Id | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    all: bool = Field(default=False, description="Every dead letter of the reactor (and no other criterion).")
    dry_run: bool = Field(default=False, description="Only count what would be redriven.")
    confirmed_ids: Annotated[list[Id], Field(max_length=10_000)] | None = Field(
        default=None,
        description="The `matched_ids` of the dry run the operator confirmed: only these are redriven; "
        "others the selection matches now arrived later and are left in the DLQ (`skipped`).",
    )
    confirmed_count: int | None = Field(
        default=None,
        ge=0,
        description="The dry run's `matched` count the operator confirmed: at most this many are "
        "redriven, oldest first; the rest are left in the DLQ (`skipped`).",
    )

    @model_validator(mode="after")
    def _chosen(self) -> RedriveIn:
        if self.selection().everything != self.all:
            raise ValueError("choose dead letters (ids, a group or filters) or `all`, not both")
        return self

    def confirmed(self) -> Confirmed | None:
        if self.confirmed_ids is None and self.confirmed_count is None:
            return None
        ids = frozenset(self.confirmed_ids) if self.confirmed_ids is not None else None
        return Confirmed(message_ids=ids, count=self.confirmed_count)

    def selection(self) -> Selection:
        return Selection(
            message_ids=frozenset(self.message_ids) if self.message_ids is not None else None,
            group=self.group,
            event_type=self.event_type,
            reason=self.reason,
            order_id=self.order_id,
            since=self.since,
            until=self.until,
        )


class RedriveOut(BaseModel):
    reactor: str
    dry_run: bool
    matched: int = Field(
        description="Dead letters the selection matched in the DLQ when the call started, each id once "
        "(on a dry run: the count to confirm)."
    )
    matched_ids: list[str] = Field(description="Their ids, oldest first (send them as `confirmed_ids`).")
    redriven: list[str] = Field(description="Ids sent back to the reactor's queue (none on a dry run).")
    skipped: list[str] = Field(
        description="Matched but not confirmed (arrived after the dry run): left in the DLQ."
    )
    missing: list[str] = Field(description="Confirmed ids no longer in the DLQ (taken meanwhile).")
    truncated: bool

    @classmethod
    def of(cls, reactor: str, done: Redrive) -> RedriveOut:
        return cls(
            reactor=reactor,
            dry_run=done.dry_run,
            matched=done.matched,
            matched_ids=done.matched_ids,
            redriven=done.redriven,
            skipped=done.skipped,
            missing=done.missing,
            truncated=done.truncated,
        )


# --- replays


class ReplayIn(BaseModel):
    """Published outbox events to replay to ONE reactor: order ids, an event type and/or a time range of
    when they were recorded (all must hold; at least one)."""

    model_config = CLOSED | {
        "json_schema_extra": {
            "examples": [
                {
                    "reactor": "loyalty",
                    "mode": "reapply",
                    "order_ids": ["0b7e7c0e-4f0d-4d43-9a43-3f1f3f6b8a10"],
                }
            ]
        }
    }
    reactor: Id
    mode: ReplayModeIn = Field(
        description="`backfill`: through the reactor's inbox (events it applied are skipped). `reapply`: "
        "its earlier effects reset, then applied again past its inbox (refused, 409, by a reactor that "
        "cannot reset: the notification)."
    )
    order_ids: Annotated[list[Id], Field(max_length=1_000)] = []
    event_type: Id | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None

    def selection(self) -> ReplaySelection:
        return ReplaySelection(tuple(self.order_ids), self.event_type, self.since, self.until)


class ReplayPlanOut(BaseModel):
    """The dry run: what the replay would take and do."""

    reactor: str
    mode: ReplayModeIn
    selection: str
    total: int
    applied_before: int = Field(description="Events the reactor had applied (an inbox row).")
    would_apply: int
    would_skip: int
    would_reset: int
    orders: int
    by_type: dict[str, int]
    first_at: datetime | None
    last_at: datetime | None

    @classmethod
    def of(cls, plan: ReplayPlan) -> ReplayPlanOut:
        return cls(
            reactor=plan.reactor,
            mode=_mode(plan.mode),
            selection=plan.selection.describe(),
            total=plan.total,
            applied_before=plan.applied_before,
            would_apply=plan.would_apply,
            would_skip=plan.would_skip,
            would_reset=plan.would_reset,
            orders=plan.orders,
            by_type=plan.by_type,
            first_at=plan.first_at,
            last_at=plan.last_at,
        )


class ReplayOut(BaseModel):
    """A replay and its progress: `published` so far; the reactor `applied` or `skipped` (applied before)
    so many; `done` once every event is settled. `state` `failed` (with `last_error`): resume it."""

    id: str
    reactor: str
    mode: ReplayModeIn
    selection: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    state: Literal["publishing", "published", "failed"]
    total: int
    published: int
    applied: int
    skipped: int
    missing: int = Field(description="Gone from the outbox (retention) before they could be published.")
    pending: int
    done: bool
    last_error: str | None
    href: str

    @classmethod
    def of(cls, status: ReplayStatus) -> ReplayOut:
        return cls(
            id=status.id,
            reactor=status.reactor,
            mode=_mode(status.mode),
            selection=status.selection,
            requested_by=status.requested_by,
            created_at=status.created_at,
            updated_at=status.updated_at,
            state=status.state,
            total=status.total,
            published=status.published,
            applied=status.applied,
            skipped=status.skipped,
            missing=status.missing,
            pending=status.pending,
            done=status.done,
            last_error=status.last_error,
            href=f"/replays/{status.id}",
        )


class ReplayList(BaseModel):
    items: list[ReplayOut]


def _mode(mode: str) -> ReplayModeIn:
    return "reapply" if mode == ReplayMode.REAPPLY else "backfill"
