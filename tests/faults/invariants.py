"""What must hold once a fault-injection run has quiesced, checked from the database, Temporal, RabbitMQ,
the mail sink and the payment provider's own record.

Two halves, so that the checker itself can be shown to fail:
- `collect` reads everything into `Records`, plain data;
- `check_records(records, expect)` holds them to the invariants, a pure function. Each invariant is a list
  of named sub-checks; an `Invariant` is held only when every sub-check is, and names the ones that failed.

Every expected figure is derived here from what the harness placed (`Expectations`) and the business rules
stated below, never with the product's own code (a wrong rule would otherwise pass on both sides).
"""

from __future__ import annotations

import json
import mailbox
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from infra import models
from infra.settings import Settings
from messaging.models import OutboxEvent
from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.dlq import list_dead_letters
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.notification.models import Notification
from reactors.registry import REACTORS

# --- the business rules, stated independently of the product's code

SHIPPED, CANCELLED, FAILED = "SHIPPED", "CANCELLED", "FAILED"
TERMINAL = frozenset({SHIPPED, CANCELLED, FAILED})
CHARGE, REFUND = "charge", "refund"
SUCCEEDED, PENDING_PAYMENT = "succeeded", "pending"
# The saga's outcome event, by terminal status (README "The saga"; one per order).
EVENT_OF_STATUS = {SHIPPED: "order.shipped.v1", CANCELLED: "order.cancelled.v1", FAILED: "order.cancelled.v1"}
# Which reactor hears which event (README "Reactors": notification mails both, loyalty and analytics...).
CONSUMERS_OF = {
    "order.shipped.v1": ("notification", "loyalty", "analytics"),
    "order.cancelled.v1": ("notification", "analytics"),
}
# Loyalty: one point per whole currency unit of a shipped order, fractions dropped. Minor-unit digits of the
# currencies the harness uses (ISO 4217); an unknown currency is a KeyError, not a guess.
MINOR_UNIT_DIGITS = {"EUR": 2, "JPY": 0, "KWD": 3}
# A mail resent in the notifier's documented crash window carries the same Message-ID: at most two copies.
MAX_COPIES_OF_A_MAIL = 2


def loyalty_points(total_minor: int, currency: str) -> int:
    divisor: int = 10 ** MINOR_UNIT_DIGITS[currency]
    return total_minor // divisor


def workflow_id_of(order_id: str) -> str:
    return "order-" + order_id


def message_id_of(event_id: str) -> str:
    return f"<{event_id}@order-saga>"


# --- what the harness did


@dataclass(frozen=True)
class PlacedSpec:
    """An order as the harness placed it."""

    customer_id: str
    items: Mapping[str, int]  # sku -> quantity
    currency: str = "EUR"


@dataclass
class Expectations:
    """What the harness did, for the checker to hold the system to."""

    # order id -> the (status, failure reason) pairs its path allows
    outcomes: dict[str, frozenset[tuple[str, str | None]]]
    # sku -> stock on hand before the run
    initial_stock: dict[str, int]
    # order id -> what was placed; sku -> unit price in minor units (the harness's own price list)
    placed: dict[str, PlacedSpec] = field(default_factory=dict)
    prices: dict[str, int] = field(default_factory=dict)
    # order ids whose cancel was answered 202
    cancels_accepted: set[str] = field(default_factory=set)
    min_cancels_accepted: int = 0
    # reactor -> ids of the poison messages routed to it (each published once)
    poison: dict[str, set[str]] = field(default_factory=dict)
    # (consumer, message id) of every duplicate the harness published
    duplicates: set[tuple[str, str]] = field(default_factory=set)
    duplicates_planned: bool = True
    # how often the notifier was killed: each kill may resend at most one wave of mails (the documented
    # window), `mails_per_kill` (the run's `reactor_batch_size`)
    notifier_kills: int = 0
    mails_per_kill: int = 1

    def total_of(self, order_id: str) -> int:
        return sum(self.prices[sku] * quantity for sku, quantity in self.placed[order_id].items.items())


# --- what the system recorded


@dataclass(frozen=True)
class OrderRecord:
    id: str
    status: str
    failure_reason: str | None
    customer_id: str
    currency: str
    total_amount: int
    lines: tuple[tuple[str, int], ...]  # (sku, quantity)


@dataclass(frozen=True)
class PaymentRecord:
    order_id: str
    kind: str
    idempotency_key: str
    amount: int
    status: str


@dataclass(frozen=True)
class EventRecord:
    id: str
    order_id: str
    event_type: str
    routing_key: str
    status: str


@dataclass
class Records:
    orders: list[OrderRecord] = field(default_factory=list)
    products: dict[str, tuple[int, int]] = field(default_factory=dict)  # sku -> (on hand, reserved)
    reservations: list[tuple[str, str, int, str]] = field(default_factory=list)  # order, sku, qty, status
    payments: list[PaymentRecord] = field(default_factory=list)
    # The payment provider's own record: idempotency key -> amount (None: no provider record was kept)
    provider_charges: dict[str, int] | None = None
    provider_refunds: dict[str, int] | None = None
    workflows: dict[str, list[str]] = field(default_factory=dict)  # workflow id -> status of each run
    outbox: list[EventRecord] = field(default_factory=list)
    inbox: list[tuple[str, str]] = field(default_factory=list)  # (consumer, message id)
    deliveries: list[tuple[str, str, str]] = field(default_factory=list)  # consumer, message id, outcome
    notifications: dict[str, str] = field(default_factory=dict)  # event id -> status
    mails: list[str] = field(default_factory=list)  # Message-ID of every mail the sink kept
    loyalty_ledger: list[tuple[str, str, int]] = field(default_factory=list)  # event id, customer, points
    loyalty_balances: dict[str, int] = field(default_factory=dict)
    analytics_orders: tuple[int, int] = (0, 0)  # shipped, cancelled (summed over days)
    analytics_sales: dict[str, tuple[int, int]] = field(default_factory=dict)  # sku -> units, revenue
    dead_letters: dict[str, list[str]] = field(default_factory=dict)  # reactor -> message ids
    queue_depths: dict[str, int] = field(default_factory=dict)  # main and wait queues


@dataclass(frozen=True)
class Invariant:
    name: str
    held: bool
    detail: str
    failed: tuple[str, ...] = ()  # the sub-checks that did not hold
    key: str = ""  # short name: orders, paths, stock, money, reactors, duplicates, dlq, outbox


class _Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.problems: list[str] = []

    def require(self, sub_check: str, held: bool, problem: str = "") -> None:
        if not held:
            self.failed.append(sub_check)
            self.problems.append(f"{sub_check}: {problem}" if problem else sub_check)

    def result(self, key: str, name: str, summary: str) -> Invariant:
        detail = "; ".join(self.problems) if self.problems else summary
        return Invariant(name, not self.failed, detail, tuple(self.failed), key)


# --- collecting


async def collect(
    sessions: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    maildir: Path,
    queue_depths: Mapping[str, int],
    provider_journal: Path | None,
) -> Records:
    records = Records(queue_depths=dict(queue_depths))
    async with sessions() as session:
        await collect_database(session, records)
    records.mails = [str(message["Message-ID"]) for message in mailbox.Maildir(maildir, create=False)]
    async for execution in temporal.list_workflows("WorkflowType='OrderWorkflow'"):
        status = execution.status.name if execution.status is not None else "UNKNOWN"
        records.workflows.setdefault(execution.id, []).append(status)
    for reactor in REACTORS:
        records.dead_letters[reactor.name] = [
            letter.message_id
            for letter in await list_dead_letters(settings, sessions, reactor.name, limit=100_000)
        ]
    if provider_journal is not None:
        records.provider_charges, records.provider_refunds = read_provider_journal(provider_journal)
    return records


async def collect_database(session: AsyncSession, records: Records) -> None:
    """The database's half of `Records` (orders, stock, payments, outbox, inboxes, reactors' tables)."""
    lines: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for order_id, sku, quantity in (
        await session.execute(
            select(models.OrderLine.order_id, models.OrderLine.sku, models.OrderLine.quantity)
        )
    ).all():
        lines[order_id].append((sku, quantity))
    records.orders = [
        OrderRecord(
            o.id, o.status, o.failure_reason, o.customer_id, o.currency, o.total_amount, tuple(lines[o.id])
        )
        for o in (await session.scalars(select(models.Order))).all()
    ]
    records.products = {
        p.sku: (p.on_hand, p.reserved) for p in (await session.scalars(select(models.Product))).all()
    }
    records.reservations = [
        (r.order_id, r.sku, r.quantity, r.status)
        for r in (await session.scalars(select(models.Reservation))).all()
    ]
    records.payments = [
        PaymentRecord(p.order_id, p.kind, p.idempotency_key, p.amount, p.status)
        for p in (await session.scalars(select(models.Payment))).all()
    ]
    records.outbox = [
        EventRecord(
            e.id,
            str(e.envelope.get("data", {}).get("order_id", e.envelope.get("subject"))),
            e.event_type,
            e.routing_key,
            e.status,
        )
        for e in (await session.scalars(select(OutboxEvent))).all()
    ]
    records.inbox = [
        (consumer, message_id)
        for consumer, message_id in await session.execute(
            select(InboxMessage.consumer, InboxMessage.message_id)
        )
    ]
    records.deliveries = [
        (consumer, message_id, str(outcome))
        for consumer, message_id, outcome in await session.execute(
            select(DeliveryRecord.consumer, DeliveryRecord.message_id, DeliveryRecord.outcome)
        )
    ]
    records.notifications = dict(
        (await session.execute(select(Notification.event_id, Notification.status))).all()
    )
    records.loyalty_ledger = [
        (e.event_id, e.customer_id, e.points)
        for e in (await session.scalars(select(LoyaltyLedgerEntry))).all()
    ]
    records.loyalty_balances = dict(
        (await session.execute(select(LoyaltyBalance.customer_id, LoyaltyBalance.points))).all()
    )
    shipped = cancelled = 0
    for row in (await session.scalars(select(DailyOrderCounts))).all():
        shipped += row.orders_shipped
        cancelled += row.orders_cancelled
    records.analytics_orders = (shipped, cancelled)
    sales: dict[str, tuple[int, int]] = {}
    for sku, units, revenue in await session.execute(
        select(DailySkuSales.sku, DailySkuSales.units, DailySkuSales.revenue)
    ):
        before = sales.get(sku, (0, 0))
        sales[sku] = (before[0] + units, before[1] + revenue)
    records.analytics_sales = sales


def read_provider_journal(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(charges, refunds) by idempotency key, from the journal the provider keeps (one JSON line each)."""
    charges: dict[str, int] = {}
    refunds: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                (charges if entry["kind"] == CHARGE else refunds).setdefault(entry["key"], entry["amount"])
    return charges, refunds


async def check_all(
    sessions: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    maildir: Path,
    expect: Expectations,
    queue_depths: Mapping[str, int],
    provider_journal: Path | None = None,
) -> list[Invariant]:
    records = await collect(sessions, temporal, settings, maildir, queue_depths, provider_journal)
    return check_records(records, expect)


# --- checking


def check_records(records: Records, expect: Expectations) -> list[Invariant]:
    return [
        orders_terminal(records, expect),
        paths_as_expected(records, expect),
        stock_conserved(records, expect),
        money_conserved(records, expect),
        reactors_applied_each_event_once(records, expect),
        duplicates_absorbed(records, expect),
        dlq_holds_exactly_the_poison(records, expect),
        outbox_drained(records),
    ]


def orders_terminal(records: Records, expect: Expectations) -> Invariant:
    checks = _Checks()
    statuses = {order.id: order.status for order in records.orders}
    open_orders = {order: status for order, status in statuses.items() if status not in TERMINAL}
    checks.require("terminal", not open_orders, f"{len(open_orders)} not terminal {_sample(open_orders)}")
    missing = set(expect.outcomes) - set(statuses)
    checks.require("recorded", not missing, f"{len(missing)} placed but not recorded {_sample(missing)}")
    extra = set(statuses) - set(expect.outcomes)
    checks.require("no extra orders", not extra, f"{len(extra)} orders nobody placed {_sample(extra)}")
    running = {wf: runs for wf, runs in records.workflows.items() if "RUNNING" in runs}
    checks.require("no workflow running", not running, f"{len(running)} still running {_sample(running)}")
    wanted = {workflow_id_of(order) for order in expect.outcomes}
    not_one = {wf: runs for wf, runs in records.workflows.items() if len(runs) != 1}
    checks.require(
        "one workflow run each", not not_one, f"{len(not_one)} with other than one run {_sample(not_one)}"
    )
    stray = set(records.workflows) - wanted
    absent = wanted - set(records.workflows)
    checks.require(
        "a workflow per order",
        not stray and not absent,
        f"{len(absent)} orders without a workflow, {len(stray)} workflows without an order",
    )
    return checks.result(
        "orders",
        "every order is terminal, one workflow run each",
        f"{len(statuses)} orders = {len(expect.outcomes)} placed, all terminal; "
        f"{len(records.workflows)} workflows, one completed run each",
    )


def paths_as_expected(records: Records, expect: Expectations) -> Invariant:
    checks = _Checks()
    actual = {order.id: (order.status, order.failure_reason) for order in records.orders}
    # An order never recorded is the "orders" invariant's to report.
    wrong = {
        order: actual[order]
        for order, allowed in expect.outcomes.items()
        if order in actual and actual[order] not in allowed
    }
    checks.require("outcome", not wrong, f"unexpected {_sample(wrong)}")
    not_cancelled = {
        o: actual.get(o) for o in expect.cancels_accepted if actual.get(o, ("",))[0] != CANCELLED
    }
    checks.require("accepted cancels end CANCELLED", not not_cancelled, _sample(not_cancelled))
    checks.require(
        "cancels accepted",
        len(expect.cancels_accepted) >= expect.min_cancels_accepted,
        f"{len(expect.cancels_accepted)} accepted, at least {expect.min_cancels_accepted} required",
    )
    totals = {
        order.id: (order.total_amount, expect.total_of(order.id))
        for order in records.orders
        if order.id in expect.placed and order.total_amount != expect.total_of(order.id)
    }
    checks.require("order totals", not totals, f"(recorded, priced) {_sample(totals)}")
    outcome_counts = Counter(f"{status}/{reason}" if reason else status for status, reason in actual.values())
    return checks.result(
        "paths",
        "each order ended as its path requires",
        f"outcomes {dict(sorted(outcome_counts.items()))}; {len(expect.cancels_accepted)} cancels accepted",
    )


def _shipped_units(records: Records, expect: Expectations) -> Counter[str]:
    units: Counter[str] = Counter()
    for order in records.orders:
        if order.status == SHIPPED and order.id in expect.placed:
            units.update(expect.placed[order.id].items)
    return units


def stock_conserved(records: Records, expect: Expectations) -> Invariant:
    checks = _Checks()
    shipped = _shipped_units(records, expect)
    consumed: Counter[str] = Counter()
    reserved_rows: Counter[str] = Counter()
    for _, sku, quantity, status in records.reservations:
        if status == "consumed":
            consumed[sku] += quantity
        elif status == "reserved":
            reserved_rows[sku] += quantity
    on_hand = {
        sku: (have, expect.initial_stock[sku] - shipped[sku])
        for sku, (have, _) in records.products.items()
        if have != expect.initial_stock[sku] - shipped[sku]
    }
    checks.require("on hand", not on_hand, f"(on hand, initial - shipped) {_sample(on_hand)}")
    reserved = {sku: held for sku, (_, held) in records.products.items() if held}
    checks.require("nothing reserved", not reserved, _sample(reserved))
    checks.require("reservations released", not +reserved_rows, _sample(dict(+reserved_rows)))
    mismatch = {
        sku: (consumed[sku], shipped[sku])
        for sku in set(consumed) | set(shipped)
        if consumed[sku] != shipped[sku]
    }
    checks.require("consumed = shipped", not mismatch, f"(consumed, shipped) {_sample(mismatch)}")
    return checks.result(
        "stock",
        "stock is conserved (on hand = initial - shipped, nothing left reserved)",
        f"shipped units {dict(sorted(shipped.items()))}, every reservation released or consumed",
    )


def money_conserved(records: Records, expect: Expectations) -> Invariant:
    checks = _Checks()
    charged: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    pending = [p for p in records.payments if p.status == PENDING_PAYMENT]
    for payment in records.payments:
        if payment.status == SUCCEEDED:
            (charged if payment.kind == CHARGE else refunded)[payment.order_id] += payment.amount
    checks.require(
        "nothing pending",
        not pending,
        f"{len(pending)} payments left pending {_sample([p.idempotency_key for p in pending])}",
    )
    shipped_wrong, unshipped_wrong = [], []
    for order in records.orders:
        if order.status == SHIPPED:
            due = expect.total_of(order.id) if order.id in expect.placed else order.total_amount
            if charged[order.id] != due or refunded[order.id]:
                shipped_wrong.append(
                    f"{order.id}: charged {charged[order.id]} of {due}, refunded {refunded[order.id]}"
                )
        elif charged[order.id] != refunded[order.id]:
            unshipped_wrong.append(
                f"{order.id} {order.status}: charged {charged[order.id]}, refunded {refunded[order.id]}"
            )
    checks.require("shipped orders charged their total", not shipped_wrong, _sample(shipped_wrong))
    checks.require("unshipped orders refunded", not unshipped_wrong, _sample(unshipped_wrong))
    shipped_total = sum(
        expect.total_of(o.id) if o.id in expect.placed else o.total_amount
        for o in records.orders
        if o.status == SHIPPED
    )
    total_charged, total_refunded = sum(charged.values()), sum(refunded.values())
    checks.require(
        "charged = shipped + refunded",
        total_charged == shipped_total + total_refunded,
        f"charged {total_charged} != shipped {shipped_total} + refunded {total_refunded}",
    )
    db_charges = {
        p.idempotency_key: p.amount for p in records.payments if p.kind == CHARGE and p.status == SUCCEEDED
    }
    db_refunds = {
        p.idempotency_key: p.amount for p in records.payments if p.kind == REFUND and p.status == SUCCEEDED
    }
    if records.provider_charges is None or records.provider_refunds is None:
        checks.require("provider record kept", False, "no record of the payment provider to reconcile")
    else:
        checks.require(
            "provider charges = recorded charges",
            records.provider_charges == db_charges,
            _diff("provider", records.provider_charges, "database", db_charges),
        )
        checks.require(
            "provider refunds = recorded refunds",
            records.provider_refunds == db_refunds,
            _diff("provider", records.provider_refunds, "database", db_refunds),
        )
    return checks.result(
        "money",
        "money is conserved and reconciled with the provider (charged = shipped totals + refunds)",
        f"charged {total_charged} = shipped {shipped_total} + refunded {total_refunded} (minor units); "
        f"{len(db_charges)} charges and {len(db_refunds)} refunds, the provider agrees; none pending",
    )


def reactors_applied_each_event_once(records: Records, expect: Expectations) -> Invariant:
    """Inbox, ledger and each reactor's own effects all agree with the published events, one for one."""
    checks = _Checks()
    status_of = {order.id: order.status for order in records.orders}
    events = records.outbox
    expected = Counter((consumer, e.id) for e in events for consumer in CONSUMERS_OF.get(e.event_type, ()))
    inbox = Counter(records.inbox)
    checks.require(
        "inbox",
        inbox == expected,
        f"{len(set(expected) - set(inbox))} missing, {len(set(inbox) - set(expected))} unexpected",
    )
    processed = Counter(
        (c, m) for c, m, outcome in records.deliveries if outcome == DeliveryOutcome.PROCESSED
    )
    checks.require(
        "ledger processed once",
        processed == expected,
        f"{len(set(expected) - set(processed))} missing, {sum(1 for n in processed.values() if n > 1)} "
        f"more than once, {len(set(processed) - set(expected))} unexpected",
    )
    mailed_events = {e.id for e in events}
    not_sent = {event: status for event, status in records.notifications.items() if status != "sent"}
    checks.require(
        "notifications",
        set(records.notifications) == mailed_events and not not_sent,
        f"{len(records.notifications)} rows for {len(mailed_events)} events, not sent {_sample(not_sent)}",
    )
    copies = Counter(records.mails)
    wanted_ids = {message_id_of(event) for event in mailed_events}
    checks.require(
        "every event mailed",
        set(copies) == wanted_ids,
        f"{len(wanted_ids - set(copies))} not mailed, {len(set(copies) - wanted_ids)} stray",
    )
    resent = {m: n for m, n in copies.items() if n > 1}
    checks.require(
        "mails resent at most in the documented window",
        all(n <= MAX_COPIES_OF_A_MAIL for n in copies.values())
        and len(resent) <= expect.notifier_kills * expect.mails_per_kill,
        f"{len(resent)} mails sent more than once, {expect.notifier_kills} notifier kills of at most "
        f"{expect.mails_per_kill} each {_sample(resent)}",
    )

    # Loyalty and analytics: expected figures from the orders placed and the rules above.
    shipped_events = {e.id: e.order_id for e in events if e.event_type == "order.shipped.v1"}
    cancelled_events = [e for e in events if e.event_type == "order.cancelled.v1"]
    ledger = Counter(event_id for event_id, _, _ in records.loyalty_ledger)
    checks.require(
        "loyalty ledger once per shipped event",
        ledger == Counter(list(shipped_events)),
        f"{len(ledger)} entries for {len(shipped_events)} shipped events",
    )
    expected_points: Counter[str] = Counter()
    for order_id in shipped_events.values():
        if order_id in expect.placed and status_of.get(order_id) == SHIPPED:
            spec = expect.placed[order_id]
            expected_points[spec.customer_id] += loyalty_points(expect.total_of(order_id), spec.currency)
    balances = {c: p for c, p in records.loyalty_balances.items() if p}
    checks.require(
        "loyalty balances",
        balances == dict(+expected_points),
        _diff("balances", balances, "by the rule", dict(+expected_points)),
    )
    entry_points = {
        event_id: points
        for event_id, _, points in records.loyalty_ledger
        if event_id in shipped_events
        and shipped_events[event_id] in expect.placed
        and points
        != loyalty_points(
            expect.total_of(shipped_events[event_id]), expect.placed[shipped_events[event_id]].currency
        )
    }
    checks.require("loyalty entries", not entry_points, f"wrong points {_sample(entry_points)}")
    checks.require(
        "analytics orders",
        records.analytics_orders == (len(shipped_events), len(cancelled_events)),
        f"{records.analytics_orders} for ({len(shipped_events)}, {len(cancelled_events)})",
    )
    expected_sales: dict[str, tuple[int, int]] = {}
    for order_id in shipped_events.values():
        for sku, quantity in expect.placed[order_id].items.items() if order_id in expect.placed else ():
            units, revenue = expected_sales.get(sku, (0, 0))
            expected_sales[sku] = (units + quantity, revenue + quantity * expect.prices[sku])
    checks.require(
        "analytics sales",
        records.analytics_sales == expected_sales,
        _diff("analytics", records.analytics_sales, "placed", expected_sales),
    )
    return checks.result(
        "reactors",
        "each reactor applied each published event exactly once (inbox, ledger, effects)",
        f"{sum(expected.values())} (reactor, event) pairs for {len(events)} events; {len(copies)} mails "
        f"({sum(copies.values()) - len(copies)} resent in the documented crash window)",
    )


def duplicates_absorbed(records: Records, expect: Expectations) -> Invariant:
    """Every duplicate the harness published reached its reactors and was ignored there.

    Except a copy that may have been lost with a retry the broker dropped (field notes: dead-lettering from
    a wait queue back to the reactor's queue is at-most-once on RabbitMQ 3.10 across a restart, "leader
    cast - leader not known. Command is dropped." in its log). The retry sweep re-drives such an event once
    from the outbox when no copy of it was applied, not each of its lost copies, and not at all when another
    copy was applied meanwhile; so a copy parked for a retry (its (reactor, event) has a `retry_scheduled`
    or `retry_recovered` row) may never arrive. That the event was applied once, and only once, is
    `reactors_applied_each_event_once`'s to check."""
    checks = _Checks()
    ignored = Counter(
        (c, m) for c, m, outcome in records.deliveries if outcome == DeliveryOutcome.DUPLICATE_IGNORED
    )
    parked = {
        (c, m)
        for c, m, outcome in records.deliveries
        if outcome in (DeliveryOutcome.RETRY_SCHEDULED, DeliveryOutcome.RETRY_RECOVERED)
    }
    checks.require("duplicates injected", bool(expect.duplicates) or not expect.duplicates_planned)
    lost_by_broker = (expect.duplicates - set(ignored)) & parked
    missing = expect.duplicates - set(ignored) - lost_by_broker
    checks.require("each ignored", not missing, f"{len(missing)} not seen as duplicates {_sample(missing)}")
    lost = f" ({len(lost_by_broker)} parked for a retry and not seen again)" if lost_by_broker else ""
    return checks.result(
        "duplicates",
        "every injected duplicate was delivered and ignored",
        f"{len(expect.duplicates)} injected (reactor, event) duplicates, all ignored{lost}; "
        f"{sum(ignored.values())} duplicate deliveries ignored in all (relay re-publishes included)",
    )


def dlq_holds_exactly_the_poison(records: Records, expect: Expectations) -> Invariant:
    checks = _Checks()
    wrong, twice = [], []
    for reactor in sorted(set(records.dead_letters) | set(expect.poison)):
        letters = Counter(records.dead_letters.get(reactor, []))
        wanted = expect.poison.get(reactor, set())
        if set(letters) != wanted:
            wrong.append(
                f"{reactor}: {len(set(letters) - wanted)} unexpected, "
                f"{len(wanted - set(letters))} poison missing"
            )
        twice += [f"{reactor}: {m} x{n}" for m, n in letters.items() if n > 1]
    checks.require("the poison, nothing else", not wrong, "; ".join(wrong))
    checks.require("each dead-lettered once", not twice, _sample(twice))
    wanted_total = sum(len(ids) for ids in expect.poison.values())
    checks.require("poison injected", wanted_total > 0)
    held_total = sum(len(ids) for ids in records.dead_letters.values())
    return checks.result(
        "dlq",
        "each DLQ holds exactly the poison messages routed to it, once",
        f"{held_total} dead letters = {wanted_total} poison deliveries",
    )


def outbox_drained(records: Records) -> Invariant:
    checks = _Checks()
    unpublished = [e.id for e in records.outbox if e.status != "published"]
    checks.require("published", not unpublished, f"{len(unpublished)} not published")
    per_order = Counter(e.order_id for e in records.outbox)
    wrong = {}
    for order in records.orders:
        kinds = [e.event_type for e in records.outbox if e.order_id == order.id]
        if order.status in TERMINAL and kinds != [EVENT_OF_STATUS[order.status]]:
            wrong[order.id] = (order.status, kinds)
    orphans = set(per_order) - {order.id for order in records.orders}
    checks.require(
        "one event of the right type per order",
        not wrong and not orphans,
        f"{_sample(wrong)}; {len(orphans)} events of no order",
    )
    waiting = {queue: depth for queue, depth in records.queue_depths.items() if depth}
    checks.require("queues empty", not waiting, f"still queued {waiting}")
    return checks.result(
        "outbox",
        "the outbox is drained (one published event of the right type per order, queues empty)",
        f"{len(records.outbox)} events published for {len(records.orders)} orders; nothing queued",
    )


def _diff(left_name: str, left: Mapping[str, Any], right_name: str, right: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    return ", ".join(f"{k}: {left_name} {left.get(k)} / {right_name} {right.get(k)}" for k in keys[:3]) + (
        f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    )


def _sample(items: Collection[object] | Mapping[Any, object], limit: int = 3) -> str:
    if not items:
        return "none"
    shown: Sequence[object] = (
        [f"{key}: {value}" for key, value in list(items.items())[:limit]]
        if isinstance(items, Mapping)
        else list(items)[:limit]
    )
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(item) for item in shown) + more


def routes(routing_key: str) -> list[str]:
    """The reactors a message with this routing key reaches (AMQP topic matching of their bindings)."""
    return [
        reactor.name
        for reactor in REACTORS
        if any(_topic_matches(pattern, routing_key) for pattern in reactor.routing_keys)
    ]


def _topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))
