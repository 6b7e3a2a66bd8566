"""The fault checker can fail: every invariant and each of its sub-checks is shown failing on records broken
in exactly that one way, and a clean record set passes.

The records come from a small model of a correct system (`build`): orders as placed, and what a correct
product records for them (stock, payments and the provider's record, workflows, outbox, reactors' effects,
mails, dead letters). Figures in the model are stated here literally (prices, points), not computed by the
product. Then `BROKEN_PRODUCTS` are deliberately broken variants (wrong points, every cancel refused, a
refund skipped, ...): the records such a product leaves make the checker fail.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import tests.faults.invariants as checker
from tests.faults.harness import WORKER_KILL, FaultPlan, Report
from tests.faults.invariants import (
    EventRecord,
    Expectations,
    Invariant,
    OrderRecord,
    PaymentRecord,
    PlacedSpec,
    Records,
    check_records,
)

pytestmark = pytest.mark.unit

PRICES = {"SKU-A": 1_299, "SKU-B": 2_550}
INITIAL = {"SKU-A": 100, "SKU-B": 100}
SHIPPED = ("SHIPPED", None)
CUSTOMER_CANCELLED = ("CANCELLED", "CUSTOMER_CANCELLED")
DECLINED = ("FAILED", "PAYMENT_DECLINED")


@dataclass
class Spec:
    id: str
    customer: str
    items: dict[str, int]
    outcome: tuple[str, str | None]
    charged: bool
    cancel_accepted: bool = False
    event_type: str | None = None  # None: the right one for the outcome
    workflow: bool = True

    @property
    def total(self) -> int:
        return sum(PRICES[sku] * quantity for sku, quantity in self.items.items())


def specs() -> list[Spec]:
    return [
        Spec("o1", "cust-1", {"SKU-A": 2, "SKU-B": 1}, SHIPPED, charged=True),  # 5148: 51 points
        Spec("o2", "cust-2", {"SKU-A": 1}, CUSTOMER_CANCELLED, charged=True, cancel_accepted=True),
        Spec("o3", "cust-1", {"SKU-B": 1}, DECLINED, charged=False),
        Spec("o4", "cust-3", {"SKU-B": 2}, SHIPPED, charged=True),  # 5100: 51 points
    ]


# What a correct product records for `specs()` (stated literally, checked by test_the_model_is_literal).
POINTS = {"cust-1": 51, "cust-3": 51}
SALES = {"SKU-A": (2, 2_598), "SKU-B": (3, 7_650)}


@dataclass
class Model:
    records: Records
    expect: Expectations
    placed: list[Spec] = field(default_factory=list)


def build(placed: list[Spec], extra: list[Spec] | None = None) -> Model:
    """Records of a correct system for `placed` (+ `extra`: orders it recorded that nobody placed)."""
    records = Records()
    everything = placed + (extra or [])
    shipped_units = {sku: 0 for sku in PRICES}
    for spec in everything:
        status, reason = spec.outcome
        records.orders.append(
            OrderRecord(spec.id, status, reason, spec.customer, "EUR", spec.total, tuple(spec.items.items()))
        )
        for sku, quantity in spec.items.items():
            records.reservations.append(
                (spec.id, sku, quantity, "consumed" if status == "SHIPPED" else "released")
            )
            if status == "SHIPPED":
                shipped_units[sku] += quantity
        if spec.charged:
            records.payments.append(
                PaymentRecord(spec.id, "charge", f"{spec.id}:charge", spec.total, "succeeded")
            )
            if status != "SHIPPED":
                records.payments.append(
                    PaymentRecord(spec.id, "refund", f"{spec.id}:refund", spec.total, "succeeded")
                )
        elif reason == "PAYMENT_DECLINED":
            records.payments.append(
                PaymentRecord(spec.id, "charge", f"{spec.id}:charge", spec.total, "declined")
            )
        if spec.workflow:
            records.workflows[f"order-{spec.id}"] = ["COMPLETED"]
        event_type = spec.event_type or ("order.shipped.v1" if status == "SHIPPED" else "order.cancelled.v1")
        records.outbox.append(EventRecord(f"ev-{spec.id}", spec.id, event_type, event_type, "published"))
    records.products = {sku: (INITIAL[sku] - shipped_units[sku], 0) for sku in PRICES}
    records.provider_charges = {p.idempotency_key: p.amount for p in records.payments
                                if p.kind == "charge" and p.status == "succeeded"}  # fmt: skip
    records.provider_refunds = {p.idempotency_key: p.amount for p in records.payments if p.kind == "refund"}
    # The reactors, from the events as published.
    by_id = {spec.id: spec for spec in everything}
    shipped_count = cancelled_count = 0
    points: dict[str, int] = {}
    sales: dict[str, tuple[int, int]] = {}
    for event in records.outbox:
        consumers = ["notification", "analytics"]
        spec = by_id[event.order_id]
        if event.event_type == "order.shipped.v1":
            consumers.append("loyalty")
            shipped_count += 1
            earned = spec.total // 100  # one point per whole euro
            records.loyalty_ledger.append((event.id, spec.customer, earned))
            points[spec.customer] = points.get(spec.customer, 0) + earned
            for sku, quantity in spec.items.items():
                units, revenue = sales.get(sku, (0, 0))
                sales[sku] = (units + quantity, revenue + quantity * PRICES[sku])
        else:
            cancelled_count += 1
        for consumer in consumers:
            records.inbox.append((consumer, event.id))
            records.deliveries.append((consumer, event.id, "processed"))
        records.notifications[event.id] = "sent"
        records.mails.append(f"<{event.id}@order-saga>")
    records.loyalty_balances = points
    records.analytics_orders = (shipped_count, cancelled_count)
    records.analytics_sales = sales
    # One injected duplicate, ignored by each of its reactors; one poison message dead-lettered by two.
    duplicate = "ev-o4"
    for consumer in ("notification", "analytics", "loyalty"):
        records.deliveries.append((consumer, duplicate, "duplicate_ignored"))
    records.dead_letters = {"notification": ["poison-1"], "analytics": ["poison-1"], "loyalty": []}
    records.queue_depths = {"ns.notification": 0, "ns.loyalty": 0, "ns.analytics": 0}

    expect = Expectations(
        outcomes={spec.id: frozenset({spec.outcome}) for spec in placed},
        initial_stock=dict(INITIAL),
        placed={spec.id: PlacedSpec(spec.customer, spec.items) for spec in placed},
        prices=dict(PRICES),
        cancels_accepted={spec.id for spec in placed if spec.cancel_accepted},
        min_cancels_accepted=1,
        poison={"notification": {"poison-1"}, "analytics": {"poison-1"}},
        duplicates={(c, duplicate) for c in ("notification", "analytics", "loyalty")},
        notifier_kills=0,
    )
    return Model(records, expect, placed)


def failures(invariants: list[Invariant]) -> set[tuple[str, str]]:
    """(invariant key, sub-check) of everything that failed; an invariant failing without a named sub-check
    shows as (key, "?")."""
    return {(invariant.key, sub) for invariant in invariants for sub in invariant.failed} | {
        (invariant.key, "?") for invariant in invariants if not invariant.held and not invariant.failed
    }


def test_the_model_is_literal() -> None:
    model = build(specs())
    assert model.records.loyalty_balances == POINTS
    assert model.records.analytics_sales == SALES


def test_clean_records_pass() -> None:
    model = build(specs())
    invariants = check_records(model.records, model.expect)
    assert len(invariants) == 8
    assert all(invariant.held for invariant in invariants), [i for i in invariants if not i.held]


# --- one break per sub-check: (invariant's second word, sub-check) -> how to break the records

Mutation = Callable[[Model], Model]


def _order(model: Model, order_id: str, **changes: object) -> None:
    records = model.records
    records.orders = [replace(o, **changes) if o.id == order_id else o for o in records.orders]  # type: ignore[arg-type]


def _payment(model: Model, key: str, **changes: object) -> None:
    records = model.records
    records.payments = [
        replace(p, **changes) if p.idempotency_key == key else p  # type: ignore[arg-type]
        for p in records.payments
    ]


def m_not_terminal(model: Model) -> Model:
    # o3 stuck compensating, even were its path lenient about it.
    _order(model, "o3", status="COMPENSATING", failure_reason=None)
    model.expect.outcomes["o3"] |= {("COMPENSATING", None)}
    return model


def m_not_recorded(model: Model) -> Model:
    model.expect.outcomes["o9"] = frozenset({SHIPPED})
    model.records.workflows["order-o9"] = ["COMPLETED"]
    return model


def m_extra_order(model: Model) -> Model:
    # A duplicate of o3 (a retried POST that made a second order), without a saga of its own.
    extra = Spec("o3-dup", "cust-1", {"SKU-B": 1}, DECLINED, charged=False, workflow=False)
    return build(model.placed, extra=[extra])


def m_workflow_running(model: Model) -> Model:
    model.records.workflows["order-o1"] = ["RUNNING"]
    return model


def m_two_runs(model: Model) -> Model:
    model.records.workflows["order-o1"] = ["COMPLETED", "COMPLETED"]
    return model


def m_no_workflow(model: Model) -> Model:
    del model.records.workflows["order-o3"]
    return model


def m_wrong_outcome(model: Model) -> Model:
    _order(model, "o3", failure_reason="INTERNAL_ERROR")
    return model


def m_accepted_cancel_shipped(model: Model) -> Model:
    model.expect.cancels_accepted.add("o1")  # o1 shipped although its cancel was accepted
    return model


def m_too_few_cancels(model: Model) -> Model:
    model.expect.min_cancels_accepted = 2
    return model


def m_wrong_total(model: Model) -> Model:
    _order(model, "o1", total_amount=5_149)
    return model


def m_on_hand(model: Model) -> Model:
    on_hand, reserved = model.records.products["SKU-A"]
    model.records.products["SKU-A"] = (on_hand - 1, reserved)
    return model


def m_still_reserved_counter(model: Model) -> Model:
    on_hand, _ = model.records.products["SKU-A"]
    model.records.products["SKU-A"] = (on_hand, 1)
    return model


def m_reservation_left(model: Model) -> Model:
    model.records.reservations = [
        (o, sku, q, "reserved" if o == "o3" else status) for o, sku, q, status in model.records.reservations
    ]
    return model


def m_reservation_not_consumed(model: Model) -> Model:
    model.records.reservations = [
        (o, sku, q, "released" if (o, sku) == ("o1", "SKU-A") else status)
        for o, sku, q, status in model.records.reservations
    ]
    return model


def m_pending_charge(model: Model) -> Model:
    model.records.payments.append(PaymentRecord("o3", "charge", "o3:charge-2", 2_550, "pending"))
    return model


def m_shipped_charged_wrong(model: Model) -> Model:
    # o1 charged a cent short, o4 a cent over: the totals still add up, each order does not.
    for key, delta in (("o1:charge", -1), ("o4:charge", 1)):
        amount = next(p.amount for p in model.records.payments if p.idempotency_key == key)
        _payment(model, key, amount=amount + delta)
        assert model.records.provider_charges is not None
        model.records.provider_charges[key] = amount + delta
    return model


def m_refund_on_wrong_order(model: Model) -> Model:
    _payment(model, "o2:refund", order_id="o3")
    return model


def m_charge_of_no_order(model: Model) -> Model:
    model.records.payments.append(PaymentRecord("ghost", "charge", "ghost:charge", 700, "succeeded"))
    assert model.records.provider_charges is not None
    model.records.provider_charges["ghost:charge"] = 700
    return model


def m_provider_charged_twice(model: Model) -> Model:
    assert model.records.provider_charges is not None
    model.records.provider_charges["o1:charge-retry"] = 5_148
    return model


def m_provider_never_refunded(model: Model) -> Model:
    model.records.provider_refunds = {}
    return model


def m_no_provider_record(model: Model) -> Model:
    model.records.provider_charges = model.records.provider_refunds = None
    return model


def m_inbox_missing(model: Model) -> Model:
    model.records.inbox.remove(("loyalty", "ev-o1"))
    return model


def m_processed_twice(model: Model) -> Model:
    model.records.deliveries.append(("analytics", "ev-o1", "processed"))
    return model


def m_notification_stuck(model: Model) -> Model:
    model.records.notifications["ev-o3"] = "sending"
    return model


def m_mail_missing(model: Model) -> Model:
    model.records.mails.remove("<ev-o3@order-saga>")
    return model


def m_mail_twice(model: Model) -> Model:
    model.records.mails.append("<ev-o1@order-saga>")
    return model


def m_ledger_twice(model: Model) -> Model:
    model.records.loyalty_ledger.append(model.records.loyalty_ledger[0])
    return model


def m_balance(model: Model) -> Model:
    model.records.loyalty_balances["cust-1"] += 1
    return model


def m_ledger_points(model: Model) -> Model:
    event, customer, points = model.records.loyalty_ledger[0]
    model.records.loyalty_ledger[0] = (event, customer, points + 1)
    return model


def m_analytics_orders(model: Model) -> Model:
    shipped, cancelled = model.records.analytics_orders
    model.records.analytics_orders = (shipped, cancelled + 1)
    return model


def m_analytics_sales(model: Model) -> Model:
    units, revenue = model.records.analytics_sales["SKU-A"]
    model.records.analytics_sales["SKU-A"] = (units, revenue + 1)
    return model


def m_no_duplicates(model: Model) -> Model:
    model.expect.duplicates = set()
    return model


def m_duplicate_not_ignored(model: Model) -> Model:
    model.records.deliveries.remove(("loyalty", "ev-o4", "duplicate_ignored"))
    return model


def m_stray_dead_letter(model: Model) -> Model:
    model.records.dead_letters["loyalty"] = ["ev-o4"]
    return model


def m_dead_lettered_twice(model: Model) -> Model:
    model.records.dead_letters["notification"] = ["poison-1", "poison-1"]
    return model


def m_no_poison(model: Model) -> Model:
    model.expect.poison = {}
    model.records.dead_letters = {}
    return model


def m_unpublished(model: Model) -> Model:
    model.records.outbox = [
        replace(e, status="pending") if e.id == "ev-o1" else e for e in model.records.outbox
    ]
    return model


def m_wrong_event_type(model: Model) -> Model:
    # A product that announces a shipped order as cancelled (the reactors act on what was announced).
    placed = [replace(s, event_type="order.cancelled.v1") if s.id == "o4" else s for s in model.placed]
    return build(placed)


def m_queued(model: Model) -> Model:
    model.records.queue_depths["ns.loyalty"] = 2
    return model


SINGLE_BREAKS: dict[tuple[str, str], Mutation] = {
    ("orders", "terminal"): m_not_terminal,
    ("orders", "recorded"): m_not_recorded,
    ("orders", "no extra orders"): m_extra_order,
    ("orders", "no workflow running"): m_workflow_running,
    ("orders", "one workflow run each"): m_two_runs,
    ("orders", "a workflow per order"): m_no_workflow,
    ("paths", "outcome"): m_wrong_outcome,
    ("paths", "accepted cancels end CANCELLED"): m_accepted_cancel_shipped,
    ("paths", "cancels accepted"): m_too_few_cancels,
    ("paths", "order totals"): m_wrong_total,
    ("stock", "on hand"): m_on_hand,
    ("stock", "nothing reserved"): m_still_reserved_counter,
    ("stock", "reservations released"): m_reservation_left,
    ("stock", "consumed = shipped"): m_reservation_not_consumed,
    ("money", "nothing pending"): m_pending_charge,
    ("money", "shipped orders charged their total"): m_shipped_charged_wrong,
    ("money", "unshipped orders refunded"): m_refund_on_wrong_order,
    ("money", "charged = shipped + refunded"): m_charge_of_no_order,
    ("money", "provider charges = recorded charges"): m_provider_charged_twice,
    ("money", "provider refunds = recorded refunds"): m_provider_never_refunded,
    ("money", "provider record kept"): m_no_provider_record,
    ("reactors", "inbox"): m_inbox_missing,
    ("reactors", "ledger processed once"): m_processed_twice,
    ("reactors", "notifications"): m_notification_stuck,
    ("reactors", "every event mailed"): m_mail_missing,
    ("reactors", "mails resent at most in the documented window"): m_mail_twice,
    ("reactors", "loyalty ledger once per shipped event"): m_ledger_twice,
    ("reactors", "loyalty balances"): m_balance,
    ("reactors", "loyalty entries"): m_ledger_points,
    ("reactors", "analytics orders"): m_analytics_orders,
    ("reactors", "analytics sales"): m_analytics_sales,
    ("duplicates", "duplicates injected"): m_no_duplicates,
    ("duplicates", "each ignored"): m_duplicate_not_ignored,
    ("dlq", "the poison, nothing else"): m_stray_dead_letter,
    ("dlq", "each dead-lettered once"): m_dead_lettered_twice,
    ("dlq", "poison injected"): m_no_poison,
    ("outbox", "published"): m_unpublished,
    ("outbox", "one event of the right type per order"): m_wrong_event_type,
    ("outbox", "queues empty"): m_queued,
}


@pytest.mark.parametrize("broken", list(SINGLE_BREAKS), ids=lambda key: f"{key[0]}/{key[1]}")
def test_each_sub_check_fails_alone(broken: tuple[str, str]) -> None:
    model = SINGLE_BREAKS[broken](build(specs()))
    invariants = check_records(model.records, model.expect)
    assert failures(invariants) == {broken}, [i for i in invariants if not i.held]


def test_every_sub_check_has_its_break() -> None:
    """A sub-check added to the checker without a break here fails this test."""
    source = inspect.getsource(checker)
    named = set(re.findall(r'require\(\s*"([^"]+)"', source))
    assert len(named) >= 39
    assert named == {sub for _, sub in SINGLE_BREAKS}


def test_the_mail_resend_window_is_allowed_once_per_notifier_kill() -> None:
    model = m_mail_twice(build(specs()))
    model.expect.notifier_kills = 1
    assert all(i.held for i in check_records(model.records, model.expect))
    model.records.mails.append("<ev-o1@order-saga>")  # a third copy is never documented
    assert ("reactors", "mails resent at most in the documented window") in failures(
        check_records(model.records, model.expect)
    )


def test_a_notifier_kill_may_resend_one_wave_not_more() -> None:
    """A wave's mails are marked `sent` together: a kill before that commit resends the whole wave."""
    model = build(specs())
    wave = sorted(set(model.records.mails))
    model.records.mails += wave
    model.expect.notifier_kills = 1
    model.expect.mails_per_kill = len(wave)
    assert all(i.held for i in check_records(model.records, model.expect))
    model.expect.mails_per_kill = len(wave) - 1
    assert ("reactors", "mails resent at most in the documented window") in failures(
        check_records(model.records, model.expect)
    )


@pytest.mark.parametrize("parked", ["retry_scheduled", "retry_recovered"])
def test_a_duplicate_parked_for_a_retry_may_be_lost(parked: str) -> None:
    """The broker may drop a copy parked in a wait queue (at-most-once dead-lettering); the sweep re-drives
    the event at most once, so that copy never arrives: not required, but only for that reactor's event."""
    model = m_duplicate_not_ignored(build(specs()))
    model.records.deliveries.append(("loyalty", "ev-o4", parked))
    invariants = check_records(model.records, model.expect)
    assert all(i.held for i in invariants)
    assert (
        "1 parked for a retry and not seen again"
        in next(i for i in invariants if i.key == "duplicates").detail
    )
    model.records.deliveries.remove(("loyalty", "ev-o4", parked))
    model.records.deliveries.append(("analytics", "ev-o4", parked))  # another reactor's
    assert ("duplicates", "each ignored") in failures(check_records(model.records, model.expect))


# --- deliberately broken products: the records each leaves behind, and a check that catches it


def p_points_per_cent(model: Model) -> Model:
    """Loyalty credits one point per cent instead of per euro."""
    model.records.loyalty_ledger = [(e, c, p * 100) for e, c, p in model.records.loyalty_ledger]
    model.records.loyalty_balances = {c: p * 100 for c, p in model.records.loyalty_balances.items()}
    return model


def p_refuses_every_cancel(model: Model) -> Model:
    """The cancel endpoint answers 409 to everything: the cancelled order ships."""
    placed = [
        replace(s, outcome=SHIPPED, cancel_accepted=False) if s.cancel_accepted else s for s in model.placed
    ]
    rebuilt = build(placed)
    # The harness reads a 409 as "refused", which allows SHIPPED for that order.
    return rebuilt


def p_skips_a_refund(model: Model) -> Model:
    """Compensation forgets the refund of a cancelled order."""
    model.records.payments = [p for p in model.records.payments if p.kind != "refund"]
    model.records.provider_refunds = {}
    return model


def p_charges_twice(model: Model) -> Model:
    """A worker restart charges again under a new key; the database keeps the first charge only."""
    assert model.records.provider_charges is not None
    model.records.provider_charges["o4:charge:retry"] = 5_100
    return model


def p_loses_stock(model: Model) -> Model:
    """A failed order's reservation is never released."""
    model.records.reservations = [
        (o, s, q, "reserved" if o == "o2" else st) for o, s, q, st in model.records.reservations
    ]
    on_hand, _ = model.records.products["SKU-A"]
    model.records.products["SKU-A"] = (on_hand, 1)
    return model


def p_mails_every_redelivery(model: Model) -> Model:
    """The notifier sends again on every redelivery."""
    model.records.mails += list(model.records.mails)
    return model


def p_starts_two_sagas(model: Model) -> Model:
    """Placing with the same Idempotency-Key twice makes a second order and a second saga."""
    extra = Spec("o1-again", "cust-1", {"SKU-A": 2, "SKU-B": 1}, SHIPPED, charged=True)
    return build(model.placed, extra=[extra])


def p_leaves_charges_pending(model: Model) -> Model:
    """A killed worker's charge is never reconciled."""
    _payment(model, "o2:charge", status="pending")
    model.records.payments = [p for p in model.records.payments if p.idempotency_key != "o2:refund"]
    assert model.records.provider_charges is not None and model.records.provider_refunds is not None
    model.records.provider_charges.pop("o2:charge")
    model.records.provider_refunds.pop("o2:refund")
    return model


BROKEN_PRODUCTS: dict[str, tuple[Mutation, set[tuple[str, str]]]] = {
    "credits wrong points": (
        p_points_per_cent,
        {("reactors", "loyalty balances"), ("reactors", "loyalty entries")},
    ),
    "refuses every cancel": (p_refuses_every_cancel, {("paths", "cancels accepted")}),
    "skips a refund": (
        p_skips_a_refund,
        {("money", "unshipped orders refunded"), ("money", "charged = shipped + refunded")},
    ),
    "charges twice": (p_charges_twice, {("money", "provider charges = recorded charges")}),
    "loses stock": (p_loses_stock, {("stock", "nothing reserved"), ("stock", "reservations released")}),
    "mails every redelivery": (
        p_mails_every_redelivery,
        {("reactors", "mails resent at most in the documented window")},
    ),
    "starts two sagas": (
        p_starts_two_sagas,
        {("orders", "no extra orders"), ("orders", "a workflow per order")},
    ),
    "leaves charges pending": (p_leaves_charges_pending, {("money", "nothing pending")}),
}


@pytest.mark.parametrize("product", list(BROKEN_PRODUCTS))
def test_a_broken_product_fails_the_checker(product: str) -> None:
    mutate, caught_by = BROKEN_PRODUCTS[product]
    model = mutate(copy.deepcopy(build(specs())))
    failed = failures(check_records(model.records, model.expect))
    assert caught_by <= failed, failed


# --- the run's own checks: faults that did not bite, no quiescence, a component that died on its own


def _report(**changes: Any) -> Report:
    plan = FaultPlan(orders=10)
    clean = build(specs())
    invariants = check_records(clean.records, clean.expect)
    report = Report(plan, [], Counter(plan.planned()), {}, invariants, 1.0, "db", "ns")
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_a_complete_run_passes() -> None:
    assert _report().ok and _report().problems() == []


def test_a_fault_that_did_not_bite_fails_the_run_and_says_so() -> None:
    report = _report()
    report.faults[WORKER_KILL] -= 1  # one kill found no charge in flight: not counted
    assert not report.ok
    assert any("did not bite" in problem and WORKER_KILL in problem for problem in report.problems())
    assert "Result: FAIL" in report.render()


def test_no_quiescence_fails_the_run() -> None:
    report = _report(quiesced=False)
    assert not report.ok and any("quiescence" in problem for problem in report.problems())


def test_a_component_that_died_on_its_own_fails_the_run() -> None:
    report = _report(crashed={"relay": [1]})
    assert not report.ok and any("relay exited on its own" in problem for problem in report.problems())


def test_a_failed_invariant_fails_the_run() -> None:
    broken = m_balance(build(specs()))
    report = _report(invariants=check_records(broken.records, broken.expect))
    assert not report.ok and report.problems() == []
