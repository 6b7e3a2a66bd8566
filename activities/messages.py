"""One dataclass in and one out of the workflow and of every activity.

Pure data: imported by workflow code, so no I/O and nothing non-deterministic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.model import OrderStatus


@dataclass(frozen=True)
class SagaLine:
    sku: str
    quantity: int


@dataclass(frozen=True)
class OrderSagaInput:
    """The saga's input. Beyond the ids, what the Temporal Web UI shows of the order (activity summaries,
    current details), given by the client because workflow code reads nothing else: the lines, the total
    in minor units of `currency`, and the order's console page. Empty on sagas started before patch
    `lean-saga` and when the starter does not know them (the Web UI then shows the step names only)."""

    order_id: str
    customer_id: str
    lines: tuple[SagaLine, ...] = ()
    total: int | None = None
    currency: str | None = None
    console_url: str | None = None


@dataclass(frozen=True)
class OrderRef:
    """Input of every step: the order id is all an activity needs, the rest is in the database."""

    order_id: str


@dataclass(frozen=True)
class StatusChange:
    order_id: str
    status: OrderStatus
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class StepOutcome:
    """What a step did. `changed` is False when a retry or duplicate found the work already done."""

    order_id: str
    changed: bool
    detail: str = ""


@dataclass(frozen=True)
class CancelRequest:
    reason: str = "cancelled by the customer"


@dataclass(frozen=True)
class CancelOutcome:
    accepted: bool
    status: OrderStatus
    reason: str


@dataclass
class OrderSagaState:
    """What the status query answers."""

    order_id: str
    status: OrderStatus
    shipping_started: bool = False
    cancel_requested: bool = False
    failure_reason: str | None = None
    failure_detail: str | None = None
    compensations_run: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OrderSagaResult:
    order_id: str
    status: OrderStatus
    failure_reason: str | None = None
    failure_detail: str | None = None
    compensations_run: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderClosure:
    """The end of an unsuccessful saga: final status, why, and what was undone."""

    order_id: str
    status: OrderStatus
    reason: str
    detail: str
    compensations: tuple[str, ...] = ()
