"""What must hold once a fault-injection run has quiesced, checked from the database, Temporal and RabbitMQ.

Each check returns an `Invariant` (held or not, with a one-line account), so a run reports all of them
instead of stopping at the first one that failed.
"""

from __future__ import annotations

import mailbox
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from domain.model import TERMINAL_STATUSES, OrderStatus
from infra import models
from infra.settings import Settings
from messaging.models import PUBLISHED, OutboxEvent
from reactors.analytics.models import DailyOrderCounts, DailySkuSales
from reactors.dlq import list_dead_letters
from reactors.loyalty.models import LoyaltyBalance, LoyaltyLedgerEntry
from reactors.loyalty.reactor import points_for
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from reactors.notification.models import SENT, Notification
from reactors.registry import REACTORS

CHARGE, REFUND, SUCCEEDED = "charge", "refund", "succeeded"


@dataclass(frozen=True)
class Invariant:
    name: str
    held: bool
    detail: str


@dataclass
class Expectations:
    """What the harness did, for the checker to hold the system to."""

    # order id -> the (status, failure reason) pairs its path allows
    outcomes: dict[str, frozenset[tuple[str, str | None]]]
    # sku -> stock on hand before the run
    initial_stock: dict[str, int]
    # reactor -> ids of the poison messages routed to it
    poison: dict[str, set[str]] = field(default_factory=dict)
    # (consumer, message id) of every duplicate the harness published
    duplicates: set[tuple[str, str]] = field(default_factory=set)


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


async def check_all(
    sessions: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    maildir: Path,
    expect: Expectations,
    queue_depths: Mapping[str, int],
) -> list[Invariant]:
    async with sessions() as session:
        return [
            await orders_terminal(session, temporal, expect),
            await paths_as_expected(session, expect),
            await stock_conserved(session, expect),
            await money_conserved(session),
            await reactors_applied_each_event_once(session, maildir),
            await duplicates_absorbed(session, expect),
            await dlq_holds_exactly_the_poison(settings, expect),
            await outbox_drained(session, queue_depths),
        ]


async def orders_terminal(session: AsyncSession, temporal: Client, expect: Expectations) -> Invariant:
    statuses = dict((await session.execute(select(models.Order.id, models.Order.status))).all())
    missing = set(expect.outcomes) - set(statuses)
    open_orders = {order: status for order, status in statuses.items() if status not in TERMINAL_STATUSES}
    running = (await temporal.count_workflows("ExecutionStatus='Running'")).count
    held = not open_orders and not missing and running == 0
    return Invariant(
        "every order is in a terminal state",
        held,
        f"{len(statuses)} orders, {len(open_orders)} not terminal {dict(Counter(open_orders.values()))}, "
        f"{len(missing)} placed but not recorded, {running} workflows still running",
    )


async def paths_as_expected(session: AsyncSession, expect: Expectations) -> Invariant:
    rows = (
        await session.execute(select(models.Order.id, models.Order.status, models.Order.failure_reason))
    ).all()
    actual = {order: (status, reason) for order, status, reason in rows}
    wrong = {
        order: actual.get(order)
        for order, allowed in expect.outcomes.items()
        if actual.get(order) not in allowed
    }
    outcome_counts = Counter(f"{status}/{reason}" if reason else status for status, reason in actual.values())
    return Invariant(
        "each order ended as its path requires",
        not wrong,
        f"outcomes {dict(sorted(outcome_counts.items()))}; unexpected: {_sample(wrong)}",
    )


async def stock_conserved(session: AsyncSession, expect: Expectations) -> Invariant:
    shipped_units: Counter[str] = Counter()
    for sku, quantity in (
        await session.execute(
            select(models.OrderLine.sku, models.OrderLine.quantity)
            .join(models.Order, models.Order.id == models.OrderLine.order_id)
            .where(models.Order.status == OrderStatus.SHIPPED)
        )
    ).all():
        shipped_units[sku] += quantity
    consumed: Counter[str] = Counter()
    still_reserved: Counter[str] = Counter()
    for sku, quantity, status in (
        await session.execute(
            select(models.Reservation.sku, models.Reservation.quantity, models.Reservation.status)
        )
    ).all():
        if status == "consumed":
            consumed[sku] += quantity
        elif status == "reserved":
            still_reserved[sku] += quantity
    problems = []
    for product in (await session.scalars(select(models.Product))).all():
        expected_on_hand = expect.initial_stock[product.sku] - shipped_units[product.sku]
        if (
            product.on_hand != expected_on_hand
            or product.reserved != 0
            or consumed[product.sku] != shipped_units[product.sku]
            or still_reserved[product.sku]
        ):
            problems.append(
                f"{product.sku}: on hand {product.on_hand} (expected {expected_on_hand}), reserved "
                f"{product.reserved}, consumed reservations {consumed[product.sku]}, shipped "
                f"{shipped_units[product.sku]}"
            )
    return Invariant(
        "stock is conserved (on hand = initial - shipped, nothing left reserved)",
        not problems,
        "; ".join(problems)
        or f"shipped units {dict(sorted(shipped_units.items()))}, every reservation released or consumed",
    )


async def money_conserved(session: AsyncSession) -> Invariant:
    orders = {
        order_id: (status, total)
        for order_id, status, total in (
            await session.execute(select(models.Order.id, models.Order.status, models.Order.total_amount))
        ).all()
    }
    charged: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    pending = 0
    for order_id, kind, amount, status in (
        await session.execute(
            select(models.Payment.order_id, models.Payment.kind, models.Payment.amount, models.Payment.status)
        )
    ).all():
        if status == SUCCEEDED:
            (charged if kind == CHARGE else refunded)[order_id] += amount
        elif status == "pending":
            pending += 1
    problems = []
    for order_id, (status, total) in orders.items():
        if status == OrderStatus.SHIPPED and (charged[order_id] != total or refunded[order_id]):
            problems.append(f"{order_id} shipped: charged {charged[order_id]}, refunded {refunded[order_id]}")
        if status != OrderStatus.SHIPPED and charged[order_id] != refunded[order_id]:
            problems.append(
                f"{order_id} {status}: charged {charged[order_id]}, refunded {refunded[order_id]}"
            )
    total_charged, total_refunded = sum(charged.values()), sum(refunded.values())
    shipped_total = sum(total for status, total in orders.values() if status == OrderStatus.SHIPPED)
    if total_charged != shipped_total + total_refunded:
        problems.append(f"charged {total_charged} != shipped {shipped_total} + refunded {total_refunded}")
    return Invariant(
        "money is conserved (charged = shipped totals + refunds, per order and in total)",
        not problems,
        _sample(problems)
        if problems
        else f"charged {total_charged} = shipped {shipped_total} + refunded {total_refunded} "
        f"(minor units); {pending} payment intents left pending",
    )


async def reactors_applied_each_event_once(session: AsyncSession, maildir: Path) -> Invariant:
    """Inbox, ledger and each reactor's own effects all agree with the published events, one for one."""
    events = (await session.scalars(select(OutboxEvent))).all()
    expected = {(consumer, event.id) for event in events for consumer in routes(event.routing_key)}
    inbox = set((await session.execute(select(InboxMessage.consumer, InboxMessage.message_id))).all())
    processed = Counter(
        (
            await session.execute(
                select(DeliveryRecord.consumer, DeliveryRecord.message_id).where(
                    DeliveryRecord.outcome == DeliveryOutcome.PROCESSED
                )
            )
        ).all()
    )
    problems = []
    if inbox != expected:
        problems.append(f"inbox: {len(expected - inbox)} missing, {len(inbox - expected)} unexpected")
    if set(processed) != expected or any(count != 1 for count in processed.values()):
        twice = sum(1 for count in processed.values() if count != 1)
        problems.append(
            f"ledger 'processed': {len(expected - set(processed))} missing, {twice} more than once"
        )

    shipped = {event.id: event for event in events if event.event_type == "order.shipped.v1"}
    cancelled = {event.id for event in events if event.event_type == "order.cancelled.v1"}

    # notification: one row per event, sent; the sink got at least one mail per event.
    notifications = dict((await session.execute(select(Notification.event_id, Notification.status))).all())
    if set(notifications) != set(shipped) | cancelled or set(notifications.values()) - {SENT}:
        problems.append(
            f"notifications: {len(notifications)} rows for {len(shipped) + len(cancelled)} events"
        )
    mails = Counter(message["Message-ID"] for message in mailbox.Maildir(maildir, create=False))
    mailed_events = {message_id.strip("<>").split("@")[0] for message_id in mails}
    if mailed_events != set(notifications):
        problems.append(
            f"mail sink: {len(mailed_events)} events mailed for {len(notifications)} notifications"
        )

    # loyalty: one ledger entry per shipped event; balances add up to the shipped orders' points.
    ledger_events = Counter((await session.scalars(select(LoyaltyLedgerEntry.event_id))).all())
    if set(ledger_events) != set(shipped) or any(count != 1 for count in ledger_events.values()):
        problems.append(f"loyalty ledger: {len(ledger_events)} entries for {len(shipped)} shipped events")
    expected_points: Counter[str] = Counter()
    for event in shipped.values():
        data = event.envelope["data"]
        expected_points[data["customer_id"]] += points_for(data["total_amount"], data["currency"])
    balances = dict((await session.execute(select(LoyaltyBalance.customer_id, LoyaltyBalance.points))).all())
    if balances != dict(expected_points):
        problems.append("loyalty balances differ from the shipped orders' points")

    # analytics: daily counters add up to the events.
    counts = (
        await session.execute(
            select(func.sum(DailyOrderCounts.orders_shipped), func.sum(DailyOrderCounts.orders_cancelled))
        )
    ).one()
    if (int(counts[0] or 0), int(counts[1] or 0)) != (len(shipped), len(cancelled)):
        problems.append(f"analytics orders: {tuple(counts)} for ({len(shipped)}, {len(cancelled)})")
    expected_sales: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in shipped.values():
        for line in event.envelope["data"]["lines"]:
            expected_sales[line["sku"]][0] += line["quantity"]
            expected_sales[line["sku"]][1] += line["line_total"]
    sales: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sku, units, revenue in (
        await session.execute(select(DailySkuSales.sku, DailySkuSales.units, DailySkuSales.revenue))
    ).all():
        sales[sku][0] += units
        sales[sku][1] += revenue
    if dict(sales) != dict(expected_sales):
        problems.append("analytics sales per SKU differ from the shipped events")

    extra_mails = sum(mails.values()) - len(mails)
    return Invariant(
        "each reactor applied each published event exactly once (inbox, ledger, effects)",
        not problems,
        "; ".join(problems)
        or f"{len(expected)} (reactor, event) pairs for {len(events)} events; "
        f"{sum(mails.values())} mails ({extra_mails} resent in the documented crash window)",
    )


async def duplicates_absorbed(session: AsyncSession, expect: Expectations) -> Invariant:
    """Every duplicate the harness published reached its reactors and was ignored there."""
    ignored = set(
        (
            await session.execute(
                select(DeliveryRecord.consumer, DeliveryRecord.message_id).where(
                    DeliveryRecord.outcome == DeliveryOutcome.DUPLICATE_IGNORED
                )
            )
        ).all()
    )
    total_ignored = await session.scalar(
        select(func.count())
        .select_from(DeliveryRecord)
        .where(DeliveryRecord.outcome == DeliveryOutcome.DUPLICATE_IGNORED)
    )
    missing = expect.duplicates - ignored
    return Invariant(
        "every injected duplicate was delivered and ignored",
        bool(expect.duplicates) and not missing,
        f"{len(expect.duplicates)} injected (reactor, event) duplicates, "
        f"{len(missing)} not seen as duplicates; "
        f"{total_ignored} duplicate deliveries ignored in all (relay re-publishes, redeliveries included)",
    )


async def dlq_holds_exactly_the_poison(settings: Settings, expect: Expectations) -> Invariant:
    problems = []
    held_total = 0
    for reactor in REACTORS:
        letters = await list_dead_letters(settings, reactor.name)
        held_total += len(letters)
        ids = Counter(letter.message_id for letter in letters)
        wanted = expect.poison.get(reactor.name, set())
        if set(ids) != wanted:
            problems.append(
                f"{reactor.name}: {len(set(ids) - wanted)} unexpected, "
                f"{len(wanted - set(ids))} poison missing"
            )
    wanted_total = sum(len(ids) for ids in expect.poison.values())
    return Invariant(
        "each DLQ holds exactly the poison messages routed to it",
        not problems and wanted_total > 0,
        "; ".join(problems) or f"{held_total} dead letters = {wanted_total} poison deliveries",
    )


async def outbox_drained(session: AsyncSession, queue_depths: Mapping[str, int]) -> Invariant:
    rows = Counter((await session.scalars(select(OutboxEvent.status))).all())
    orders = await session.scalar(select(func.count()).select_from(models.Order))
    waiting = {queue: depth for queue, depth in queue_depths.items() if depth}
    held = set(rows) <= {PUBLISHED} and sum(rows.values()) == orders and not waiting
    return Invariant(
        "the outbox is drained (one published event per order, reactor queues empty)",
        held,
        f"outbox {dict(rows)} for {orders} orders; messages still queued: {waiting or 'none'}",
    )


def _sample(items: Collection[object] | Mapping[str, object], limit: int = 3) -> str:
    if not items:
        return "none"
    shown: Sequence[object] = (
        [f"{key}: {value}" for key, value in list(items.items())[:limit]]
        if isinstance(items, Mapping)
        else list(items)[:limit]
    )
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(item) for item in shown) + more
