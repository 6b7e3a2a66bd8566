"""Fault-injection harness: the real processes, RabbitMQ and PostgreSQL, a mix of orders, faults, invariants.

    python -m tests.faults.harness --orders 60      # what CI runs (`pytest -m faults`), about 2 minutes
    make faults ORDERS=1000                          # a large run

It creates a fresh PostgreSQL database (migrated with Alembic), starts the stack (`ops.launcher`: dev
server, SMTP sink, one process per reactor, relay, worker, API), adds products over HTTP, and places orders
over HTTP at a steady rate, covering every path: tok_ok, tok_declined, tok_flaky, country ZZ, out of stock,
contended stock, customer cancel. Meanwhile two lanes of faults run, spread over the placement window:

- the worker is SIGKILLed while sagas are in flight, and restarted;
- the broker side, one fault after the other: each reactor SIGKILLed and restarted; RabbitMQ stopped and
  started (`rabbitmqctl stop_app`/`start_app`, always restored); the relay SIGKILLed between a confirm and
  marking the row (`tests.faults.relay_fault`, the relay's own `after_confirm` seam); duplicates (published
  rows republished to the exchange as they are) and poison messages (malformed, valid routing keys).

After quiescence the checker (`tests.faults.invariants`) holds the system to its invariants and the harness
prints its figures: orders per path and outcome, faults injected per kind, each invariant held or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from contracts.envelope import STRUCTURED_CONTENT_TYPE
from domain.model import TERMINAL_STATUSES, FailureReason, OrderStatus
from infra import models
from infra.db import Database, open_database
from infra.settings import Settings
from messaging.broker import ConfirmedPublisher
from messaging.models import PENDING, PUBLISHED, OutboxEvent
from ops.launcher import (
    FAST_DISPATCH_FLAG,
    MODULES,
    NAMESPACE_COUNT_FLAG,
    REACTOR_NAMES,
    LocalStack,
    StackOptions,
)
from reactors.models import DeliveryOutcome, DeliveryRecord, InboxMessage
from tests.faults.broken import VARIANTS
from tests.faults.invariants import (
    Expectations,
    Invariant,
    PlacedSpec,
    check_all,
    read_provider_journal,
    routes,
)
from tests.support import empty_database, migrate

T = TypeVar("T")
API_KEY = Settings.DEVELOPMENT_API_KEY
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SHIPPED = (OrderStatus.SHIPPED.value, None)

# Settings of every component during a run: quick reconnects and retries, so recovery fits the CI budget.
RUN_ENV = {
    # A charge takes this long: sagas stay in flight long enough to be killed mid-way, and to be cancelled.
    "SIMULATED_PAYMENT_LATENCY_MS": "300",
    "BROKER_CALL_TIMEOUT_SECONDS": "5",
    "BROKER_RECONNECT_MAX_SECONDS": "1",
    "OUTBOX_POLL_INTERVAL_SECONDS": "1",
    # About 12 s of retries over 5 attempts: a database restart (a few seconds) is waited out.
    "REACTOR_RETRY_DELAYS_MS": "[500, 2000, 5000]",
    "REACTOR_MAX_ATTEMPTS": "5",
    # A notifier killed mid-send leaves a claim; the retries above outlast this lease.
    "NOTIFICATION_SEND_LEASE_SECONDS": "2",
    "REACTOR_SHUTDOWN_TIMEOUT_SECONDS": "3",
    "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
}
# With the mail server down (10 s in the CI size, a minute in the large run): the product's own retry budget
# (1 s, 5 s, 30 s, 30 s, about 66 s over 5 attempts), so that the outage is waited out, not dead-lettered.
LONG_OUTAGE_ENV = {"REACTOR_RETRY_DELAYS_MS": "[1000, 5000, 30000]"}


@dataclass(frozen=True)
class OrderPath:
    name: str
    weight: int
    token: str = "tok_ok"
    country: str = "DE"
    cancel: bool = False
    outcomes: frozenset[tuple[str, str | None]] = frozenset({SHIPPED})

    def items(self, index: int) -> dict[str, int]:
        return {
            "ok": {"SKU-A": 1 + index % 3, **({"SKU-B": 1} if index % 2 else {})},
            "flaky": {"SKU-B": 1},
            "declined": {"SKU-A": 1},
            "zz": {"SKU-A": 2},
            "out_of_stock": {"SKU-A": 1, "SKU-EMPTY": 1},
            "contended": {"SKU-SCARCE": 1},
            "cancel": {"SKU-A": 1, "SKU-B": 1},
        }[self.name]


def _failed(reason: FailureReason) -> tuple[str, str | None]:
    return (OrderStatus.FAILED.value, reason.value)


PATHS = (
    OrderPath("ok", 4),
    # The simulated provider keeps its attempt count in the worker's memory: each worker restart makes a flaky
    # charge fail twice more, so under repeated kills STEP_RETRY can run out, and the saga then ends
    # compensated as INTERNAL_ERROR (by design; counted in the report).
    OrderPath(
        "flaky", 1, token="tok_flaky", outcomes=frozenset({SHIPPED, _failed(FailureReason.INTERNAL_ERROR)})
    ),
    OrderPath(
        "declined", 1, token="tok_declined", outcomes=frozenset({_failed(FailureReason.PAYMENT_DECLINED)})
    ),
    OrderPath("zz", 1, country="ZZ", outcomes=frozenset({_failed(FailureReason.SHIPPING_UNAVAILABLE)})),
    OrderPath("out_of_stock", 1, outcomes=frozenset({_failed(FailureReason.OUT_OF_STOCK)})),
    OrderPath("contended", 1, outcomes=frozenset({SHIPPED, _failed(FailureReason.OUT_OF_STOCK)})),
    OrderPath("cancel", 1, cancel=True, outcomes=frozenset({SHIPPED})),  # set once the cancel answers
)
CUSTOMER_CANCELLED = (OrderStatus.CANCELLED.value, FailureReason.CUSTOMER_CANCELLED.value)
PRODUCTS = {"SKU-A": 1_299, "SKU-B": 2_550, "SKU-SCARCE": 999, "SKU-EMPTY": 500}

# Kinds of fault, as reported.
WORKER_KILL = "worker SIGKILL mid-saga (restarted)"
BROKER_OUTAGE = "RabbitMQ stop_app/start_app"
RELAY_KILL = "relay SIGKILL after confirm, before mark"
DUPLICATES = "duplicate deliveries (republished)"
POISON = "poison deliveries (malformed)"
TEMPORAL_RESTART = "Temporal server restarted"
POSTGRES_RESTART = "PostgreSQL restarted"
SMTP_OUTAGE = "SMTP server down"
# The long-outage lane's kinds; a plan without replicas or outages (older runs) plans none of them.


def reactor_kill(name: str) -> str:
    return f"reactor SIGKILL: {name} (restarted)"


@dataclass(frozen=True)
class FaultPlan:
    orders: int = 60
    rate: float = 2.5  # orders placed per second
    worker_kills: int = 3
    reactor_kills: int = 1  # per reactor
    broker_outages: int = 1
    broker_down_seconds: float = 3.0
    relay_kills: int = 1
    duplicates: int = 6  # published rows republished, in all
    poison_rounds: int = 1  # each round publishes one message of each malformed kind
    quiescence_seconds: float = 150.0
    seed: int = 7
    # Processes of each kind: workers, relays (PostgreSQL), and of each reactor.
    replicas: int = 2
    temporal_restarts: int = 1
    postgres_restarts: int = 1
    smtp_outages: int = 1
    smtp_down_seconds: float = 20.0

    @classmethod
    def for_orders(cls, orders: int, **overrides: Any) -> FaultPlan:
        """A plan whose number of faults grows with the number of orders."""
        rounds = 1 + orders // 400
        plan = cls(
            orders=orders,
            rate=2.5 if orders <= 100 else 6.0,
            worker_kills=3 + orders // 250,
            reactor_kills=rounds,
            broker_outages=rounds,
            relay_kills=rounds,
            duplicates=max(6, orders // 10),
            poison_rounds=rounds,
            quiescence_seconds=150.0 + orders * 0.15,
            # Every fault at every size; the large run's outages outlast every reconnect and retry bound of
            # the run's settings, the CI size's are short (the retries they cause would double its time).
            broker_down_seconds=3.0 if orders < 200 else 60.0,
            smtp_outages=1,
            postgres_restarts=1,
            smtp_down_seconds=10.0 if orders < 200 else 60.0,
        )
        return cls(**{**plan.__dict__, **overrides})

    def planned(self) -> Counter[str]:
        counts = Counter(
            {
                WORKER_KILL: self.worker_kills,
                BROKER_OUTAGE: self.broker_outages,
                RELAY_KILL: self.relay_kills,
                DUPLICATES: self.duplicates,
                POISON: self.poison_rounds * len(POISON_KINDS),
                TEMPORAL_RESTART: self.temporal_restarts,
                POSTGRES_RESTART: self.postgres_restarts,
                SMTP_OUTAGE: self.smtp_outages,
            }
        )
        for name in REACTOR_NAMES:
            counts[reactor_kill(name)] = self.reactor_kills
        return counts


@dataclass
class PlacedOrder:
    index: int
    path: OrderPath
    customer_id: str
    order_id: str | None = None
    cancel_answer: str | None = None  # accepted | refused | unknown

    def body(self) -> dict[str, Any]:
        return {
            "customer": {"id": self.customer_id, "email": f"{self.customer_id}@example.com"},
            "items": [{"sku": sku, "quantity": q} for sku, q in self.path.items(self.index).items()],
            "payment_token": self.path.token,
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "1 Analytical Way",
                "city": "Berlin",
                "postal_code": "10115",
                "country": self.path.country,
            },
        }

    def outcomes(self) -> frozenset[tuple[str, str | None]]:
        if self.cancel_answer == "accepted":
            return frozenset({CUSTOMER_CANCELLED})
        if self.cancel_answer == "unknown":
            return frozenset({CUSTOMER_CANCELLED, SHIPPED})
        return self.path.outcomes


@dataclass
class Report:
    plan: FaultPlan
    orders: list[PlacedOrder]
    faults: Counter[str]
    fault_notes: dict[str, list[str]]
    invariants: list[Invariant]
    seconds: float
    database: str
    namespace: str
    crashed: dict[str, list[int]] = field(default_factory=dict)
    quiesced: bool = True
    # POSTs retried with the same Idempotency-Key after a 5xx or a lost connection (each accepted in the end)
    client_retries: int = 0

    @property
    def faults_complete(self) -> bool:
        """Every planned fault bit: only a kill that hit work in flight counts (see `FaultRun._fault`)."""
        planned = self.plan.planned()
        return all(self.faults[kind] >= count for kind, count in planned.items())

    def problems(self) -> list[str]:
        """Why the run fails besides the invariants: faults that did not land, no quiescence, crashes."""
        found = []
        for kind, count in self.plan.planned().items():
            if self.faults[kind] < count:
                found.append(f"fault did not bite: {kind}: {self.faults[kind]} of {count} planned landed")
        if not self.quiesced:
            found.append(f"no quiescence within {self.plan.quiescence_seconds:.0f} s")
        for name, codes in self.crashed.items():
            found.append(f"{name} exited on its own (exit codes {codes})")
        if not self.invariants:
            found.append("the invariants were not checked")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems() and all(i.held for i in self.invariants)

    def render(self) -> str:
        by_path = Counter(order.path.name for order in self.orders)
        cancels = Counter(order.cancel_answer for order in self.orders if order.path.cancel)
        lines = [
            f"Fault-injection run: {len(self.orders)} orders in {self.seconds:.1f} s "
            f"(database {self.database}, broker namespace {self.namespace})",
            "Orders by path:  " + ", ".join(f"{name} {count}" for name, count in by_path.items()),
            "Cancels:         " + ", ".join(f"{answer} {count}" for answer, count in cancels.items()),
            f"Client retries:  {self.client_retries} POSTs retried with the same Idempotency-Key after a 5xx "
            "or a lost connection, every one accepted in the end",
            "Faults injected (done/planned):",
        ]
        planned = self.plan.planned()
        for kind in planned:
            notes = "; ".join(self.fault_notes.get(kind, []))
            lines.append(f"  {kind:44} {self.faults[kind]:>4}/{planned[kind]:<4} {notes}"[:400])
        held = sum(invariant.held for invariant in self.invariants)
        lines.append(f"Invariants ({held}/{len(self.invariants)} held):")
        for invariant in self.invariants:
            lines.append(f"  [{'held' if invariant.held else 'FAILED'}] {invariant.name}: {invariant.detail}")
        for problem in self.problems():
            lines.append(f"  [FAILED] {problem}")
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"Result: {verdict}")
        return "\n".join(lines)


POISON_KINDS = ("not JSON", "not a CloudEvent", "invalid payload", "unknown version")


def poison_messages() -> list[tuple[str, str, str, bytes]]:
    """(kind, routing key, message id, body): one malformed message of each kind, valid routing keys."""

    def envelope(message_id: str, event_type: str, data: dict[str, Any]) -> bytes:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": message_id,
                "source": "/faults/poison",
                "type": event_type,
                "subject": "poison",
                "time": datetime.now(UTC).isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            }
        ).encode()

    ids = ["poison-" + uuid.uuid4().hex for _ in POISON_KINDS]
    return [
        (POISON_KINDS[0], "order.shipped.v1", ids[0], b"\x00\x01 definitely not JSON"),
        (
            POISON_KINDS[1],
            "order.cancelled.v1",
            ids[1],
            json.dumps({"hello": "world", "id": ids[1]}).encode(),
        ),
        (POISON_KINDS[2], "order.shipped.v1", ids[2], envelope(ids[2], "order.shipped.v1", {"order_id": 42})),
        (POISON_KINDS[3], "order.cancelled.v1", ids[3], envelope(ids[3], "order.cancelled.v9", {})),
    ]


async def rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    process = await asyncio.create_subprocess_exec(
        ctl, "-q", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {output.decode(errors='replace')}")


class FaultRun:
    def __init__(
        self,
        plan: FaultPlan,
        workdir: Path,
        *,
        echo: Callable[[str], None] = print,
        broken: str | None = None,
    ) -> None:
        self.plan = plan
        self.broken = broken
        self.workdir = workdir
        self._echo = echo
        self._random = random.Random(plan.seed)
        self.orders: list[PlacedOrder] = []
        self.faults: Counter[str] = Counter()
        self.notes: dict[str, list[str]] = {}
        self.expect = Expectations(outcomes={}, initial_stock={}, prices=dict(PRODUCTS))
        self.journal = workdir / "provider-journal.jsonl"
        self._scheduled = 0
        self._progress = asyncio.Condition()  # notified as orders are placed; the fault lanes wait on it
        self._started = time.monotonic()
        self._broker_stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.client_retries = 0
        self._http: httpx.AsyncClient | None = None

    # --- the run

    async def run(self) -> Report:
        self._started = time.monotonic()
        async with empty_database("postgresql", self.workdir) as url:
            await migrate(url)
            options = StackOptions(
                workdir=self.workdir,
                database_url=url,
                namespace="faults-" + uuid.uuid4().hex[:10],
                log_level="INFO",
                extra_env={**RUN_ENV, **(LONG_OUTAGE_ENV if self.plan.smtp_outages else {})},
                server_extra_flags=(*NAMESPACE_COUNT_FLAG, *FAST_DISPATCH_FLAG),
                commands=self._commands(),
                replicas={kind: self.plan.replicas for kind in ("worker", "relay", "reactor")},
            )
            stack = LocalStack(options)
            database = open_database(stack.settings)
            invariants: list[Invariant] = []
            crashed: dict[str, list[int]] = {}
            quiesced = False
            try:
                await stack.start()
                self.log(f"stack up: API {stack.api_url}, Temporal {stack.temporal_address}")
                async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=AUTH) as http:
                    self._http = http
                    await self._add_products(http)
                    await asyncio.gather(
                        self._place_orders(http),
                        self._worker_lane(stack, database),
                        self._broker_lane(stack, database, http),
                        self._outage_lane(stack, database),
                    )
                    if self._tasks:
                        await asyncio.gather(*self._tasks)
                self.log("orders placed and faults injected; waiting for quiescence")
                quiesced, depths = await self._quiesce(stack, database)
                crashed = stack.crashed()
                cancels = sum(order.path.cancel for order in self.orders)
                self.expect.min_cancels_accepted = max(1, cancels // 3) if cancels else 0
                self.expect.notifier_kills = stack.components["reactor-notification"].kills
                self.expect.mails_per_kill = stack.settings.reactor_batch_size  # one wave per kill
                invariants = await check_all(
                    database.sessions,
                    stack.temporal,
                    stack.settings,
                    stack.maildir,
                    self.expect,
                    depths,
                    self.journal,
                )
            finally:
                if self._broker_stopped:
                    await rabbitmqctl("start_app")
                    await rabbitmqctl("await_startup")
                await database.dispose()
                await stack.stop()
            return Report(
                self.plan,
                self.orders,
                self.faults,
                self.notes,
                invariants,
                time.monotonic() - self._started,
                url.rsplit("/", 1)[-1],
                options.namespace,
                crashed,
                quiesced,
                self.client_retries,
            )

    def _commands(self) -> dict[str, tuple[str, ...]]:
        """The worker with the journaled provider; with `broken`, one component replaced by its broken
        variant (`tests.faults.broken`)."""
        commands: dict[str, tuple[str, ...]] = {"worker": ("tests.faults.provider_worker", str(self.journal))}
        if self.broken is not None:
            kind = VARIANTS[self.broken].kind
            commands[kind] = ("tests.faults.broken", self.broken, *(commands.get(kind) or (MODULES[kind],)))
        return commands

    def log(self, message: str) -> None:
        self._echo(f"[{time.monotonic() - self._started:6.1f}s] {message}")

    def _fault(self, kind: str, note: str, count: int = 1) -> None:
        self.faults[kind] += count
        self.notes.setdefault(kind, []).append(note)
        self.log(f"fault: {kind}: {note}")

    # --- orders

    async def _add_products(self, http: httpx.AsyncClient) -> None:
        contended = max(1, self.plan.orders // 10)
        stock = {
            "SKU-A": 4 * self.plan.orders + 10,
            "SKU-B": 2 * self.plan.orders + 10,
            "SKU-SCARCE": max(1, contended // 2),  # about half the contended orders get one
            "SKU-EMPTY": 0,
        }
        for sku, price in PRODUCTS.items():
            body = {
                "sku": sku,
                "name": sku,
                "unit_price": price,
                "currency": "EUR",
                "initial_stock": stock[sku],
            }
            response = await http.post("/products", json=body)
            response.raise_for_status()
        self.expect.initial_stock = stock

    def _plan_orders(self) -> list[PlacedOrder]:
        cycle = [path for path in PATHS for _ in range(path.weight)]
        paths = [cycle[i % len(cycle)] for i in range(self.plan.orders)]
        self._random.shuffle(paths)
        return [PlacedOrder(i, path, f"cust-{i % 12}") for i, path in enumerate(paths)]

    async def _place_orders(self, http: httpx.AsyncClient) -> None:
        planned = self._plan_orders()
        loop = asyncio.get_running_loop()
        start = loop.time()
        placing = []
        for order in planned:
            delay = start + order.index / self.plan.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._scheduled += 1
            async with self._progress:
                self._progress.notify_all()
            placing.append(asyncio.ensure_future(self._place(http, order)))
        await asyncio.gather(*placing)
        self.log(f"{len(planned)} orders placed")

    async def _place(self, http: httpx.AsyncClient, order: PlacedOrder) -> None:
        self.orders.append(order)
        key = str(uuid.uuid4())
        for _ in range(60):
            try:
                response = await http.post("/orders", json=order.body(), headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                self.client_retries += 1
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 202:
                order.order_id = str(response.json()["order_id"])
                break
            if response.status_code not in (409, 500, 502, 503):  # only those are worth the same key again
                raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")
            self.client_retries += 1
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("POST /orders kept failing")
        self.expect.placed[order.order_id] = PlacedSpec(order.customer_id, order.path.items(order.index))
        if order.path.cancel:
            order.cancel_answer = await self._cancel(http, order.order_id)
            if order.cancel_answer == "accepted":
                self.expect.cancels_accepted.add(order.order_id)
        self.expect.outcomes[order.order_id] = order.outcomes()

    async def _cancel(self, http: httpx.AsyncClient, order_id: str) -> str:
        uncertain = False
        for _ in range(10):
            try:
                response = await http.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"})
            except httpx.HTTPError:
                uncertain = True  # it may have been accepted before the connection broke
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 202:
                return "accepted"
            if response.status_code == 409:
                return "unknown" if uncertain else "refused"
            uncertain = True
            await asyncio.sleep(0.5)
        return "unknown"

    def _placed_fraction(self) -> float:
        return self._scheduled / self.plan.orders

    async def _at_fraction(self, fraction: float) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self._placed_fraction() >= fraction)

    # --- lane A: the worker

    async def _worker_lane(self, stack: LocalStack, database: Database) -> None:
        """Each kill must land while a charge is inside the provider call (a payment row `pending`); a kill
        that found none does not count, and is tried again a little later (3 tries)."""
        kills = self.plan.worker_kills
        for n in range(kills):
            await self._at_fraction((n + 0.6) / (kills + 0.5))
            for _ in range(3):
                in_flight, charging = await self._sagas_in_flight(database)
                # Best: the provider charged and its answer is on the way back (a lost answer); else any
                # charge inside its provider call.
                in_transit = 0
                for _ in range(150):
                    in_transit = await self._answers_in_transit(database)
                    if in_transit:
                        break
                    await asyncio.sleep(0.02)
                for _ in range(100):
                    if charging or in_transit:
                        break
                    await asyncio.sleep(0.1)
                    in_flight, charging = await self._sagas_in_flight(database)
                await stack.kill("worker")
                await stack.start_component("worker")
                if charging or in_transit:
                    self._fault(
                        WORKER_KILL,
                        f"{in_flight} sagas open, {max(charging, in_transit)} charging, "
                        f"{in_transit} charged at the provider with the answer in transit",
                    )
                    break
                self.log(f"worker kill did not bite (no charge in flight, {in_flight} sagas open)")
                await stack.wait_for_worker()

    async def _sagas_in_flight(self, database: Database) -> tuple[int, int]:
        """(orders not in a terminal state, charges recorded as pending: the provider call is under way)."""
        return await _retrying(lambda: self._sagas_in_flight_once(database))

    async def _answers_in_transit(self, database: Database) -> int:
        """Charges the provider made (its journal) that the database still has `pending`."""
        charged, _ = read_provider_journal(self.journal)
        if not charged:
            return 0

        async def pending() -> set[str]:
            async with database.sessions() as session:
                keys = await session.scalars(
                    select(models.Payment.idempotency_key).where(models.Payment.status == "pending")
                )
                return set(keys)

        return len(set(charged) & await _retrying(pending))

    async def _sagas_in_flight_once(self, database: Database) -> tuple[int, int]:
        async with database.sessions() as session:
            open_orders = await _count(
                session, models.Order, models.Order.status.not_in([s.value for s in TERMINAL_STATUSES])
            )
            charging = await _count(session, models.Payment, models.Payment.status == "pending")
        return open_orders, charging

    # --- lane B: broker, relay, reactors, messages

    async def _broker_lane(self, stack: LocalStack, database: Database, http: httpx.AsyncClient) -> None:
        plan = self.plan
        rounds = max(plan.reactor_kills, plan.relay_kills, plan.broker_outages, plan.poison_rounds, 1)
        per_round = -(-plan.duplicates // rounds)
        steps: list[Callable[[], Awaitable[None]]] = []
        for r in range(rounds):
            if r < plan.reactor_kills:
                steps.append(lambda: self._kill_reactor(stack, "notification", database))
            if r < plan.relay_kills:
                steps.append(lambda: self._kill_relay_after_confirm(stack, database, http))
            if r < plan.poison_rounds:
                steps.append(lambda: self._publish_poison(stack.settings))
            if r < plan.broker_outages:
                steps.append(lambda: self._broker_outage(stack))
            if r < plan.reactor_kills:
                steps.append(lambda: self._kill_reactor(stack, "loyalty", database))
            wanted = min(per_round, plan.duplicates - per_round * r)
            if wanted > 0:
                steps.append(lambda n=wanted: self._publish_duplicates(stack.settings, database, n))  # type: ignore[misc]
            if r < plan.reactor_kills:
                steps.append(lambda: self._kill_reactor(stack, "analytics", database))
        for n, step in enumerate(steps):
            await self._at_fraction(0.05 + 0.9 * n / len(steps))
            await step()

    async def _kill_reactor(self, stack: LocalStack, name: str, database: Database) -> None:
        """Freeze the reactor (SIGSTOP) until events wait for it, then SIGKILL it: the broker holds
        deliveries it never acked, which must come back to its successor."""
        component = stack.components[f"reactor-{name}"]
        # Its replicas are frozen too, or they would take the work the frozen one leaves waiting.
        others = [stack.components[r] for r in stack.replica_names(f"reactor-{name}", "reactor")[1:]]
        for process in (component, *others):
            if process.running:
                os.kill(process.pid, signal.SIGSTOP)
        outstanding, nudged = 0, False
        for attempt in range(200):  # up to 20 s frozen, until a few events wait for it
            outstanding = await self._outstanding(database, name)
            if outstanding >= 3 or (nudged and outstanding >= 1 and attempt >= 100):
                break
            if attempt == 10 and outstanding < 3 and self._http is not None:
                # Late in the run nothing may be flowing any more: two more orders give it work.
                nudged = True
                for n in range(2):
                    extra = PlacedOrder(len(self.orders) + 20_000 + n, PATHS[0], "cust-nudge")
                    self._track(self._place(self._http, extra))
            await asyncio.sleep(0.1)
        await stack.kill(f"reactor-{name}")
        for other in others:
            if other.running:
                os.kill(other.pid, signal.SIGCONT)
        await stack.start_component(f"reactor-{name}")
        await stack.wait_for_reactors()
        if outstanding > 0:  # only a kill with work outstanding proves redelivery to the successor
            self._fault(reactor_kill(name), f"{outstanding} events outstanding at the kill")
        else:
            self.log(f"reactor-{name} kill did not bite: no event outstanding")

    async def _outstanding(self, database: Database, reactor: str) -> int:
        """Events published for this reactor that it has not applied yet."""
        return await _retrying(lambda: self._outstanding_once(database, reactor))

    async def _outstanding_once(self, database: Database, reactor: str) -> int:
        async with database.sessions() as session:
            published = (
                await session.scalars(select(OutboxEvent.routing_key).where(OutboxEvent.status == PUBLISHED))
            ).all()
            applied = await _count(session, InboxMessage, InboxMessage.consumer == reactor)
        return sum(reactor in routes(key) for key in published) - applied

    async def _broker_outage(self, stack: LocalStack) -> None:
        started = time.monotonic()
        self._broker_stopped = True
        try:
            await rabbitmqctl("stop_app")
            self.log("RabbitMQ stopped")
            await asyncio.sleep(self.plan.broker_down_seconds)
        finally:
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_startup")
            self._broker_stopped = False
        self._fault(BROKER_OUTAGE, f"{time.monotonic() - started:.1f} s without AMQP")
        await stack.wait_for_reactors()

    async def _kill_relay_after_confirm(
        self, stack: LocalStack, database: Database, http: httpx.AsyncClient
    ) -> None:
        marker = self.workdir / f"relay-confirmed-{self.faults[RELAY_KILL]}.txt"
        marker.unlink(missing_ok=True)
        await stack.kill("relay")
        # Its replicas are frozen meanwhile, or late in the run they may publish every row before the armed
        # relay finds one (SKIP LOCKED shares them), and the fault would not bite.
        others = [stack.components[r] for r in stack.replica_names("relay", "relay")[1:]]
        for other in others:
            if other.running:
                os.kill(other.pid, signal.SIGSTOP)
        armed = stack.python_component(
            f"relay-armed-{self.faults[RELAY_KILL]}", "tests.faults.relay_fault", str(marker)
        )
        try:
            await armed.start()
            loop = asyncio.get_running_loop()
            deadline, nudged = loop.time() + 30, False
            while armed.running and loop.time() < deadline:
                if not nudged and loop.time() > deadline - 22:
                    # Nothing to publish yet: one more order gives the armed relay a row.
                    nudged = True
                    extra = PlacedOrder(len(self.orders) + 10_000, PATHS[0], "cust-nudge")
                    self._track(self._place(http, extra))
                await asyncio.sleep(0.05)
        finally:
            for other in others:
                if other.running:
                    os.kill(other.pid, signal.SIGCONT)
        died = armed.process is not None and armed.process.returncode == -9 and marker.exists()
        if died:
            armed.expect_exit()  # it killed itself at the seam, as designed
        if armed.running:
            await armed.kill()
        if died:
            event_id = marker.read_text()
            async with database.sessions() as session:
                status = await session.scalar(select(OutboxEvent.status).where(OutboxEvent.id == event_id))
            # The seam runs after the confirm and before the mark: the armed relay never marked the row.
            # With a second relay running, that one may already have published it again and marked it.
            if status == PENDING:
                self._fault(RELAY_KILL, f"event {event_id[:8]} confirmed, row still pending")
            else:
                self._fault(
                    RELAY_KILL, f"event {event_id[:8]} confirmed, row since re-published by the replica"
                )
        else:
            self.log("armed relay did not publish anything")
        await stack.start_component("relay")

    async def _publish_duplicates(self, settings: Settings, database: Database, wanted: int) -> None:
        async with database.sessions() as session:
            rows = list(
                (await session.scalars(select(OutboxEvent).where(OutboxEvent.status == PUBLISHED))).all()
            )
        chosen = self._random.sample(rows, min(wanted, len(rows)))
        publisher = ConfirmedPublisher(settings, "faults-duplicates")
        try:
            for row in chosen:
                await publisher.publish(
                    exchange=f"{settings.broker_namespace}.events",
                    routing_key=row.routing_key,
                    # Byte for byte what the relay sends.
                    body=json.dumps(row.envelope, separators=(",", ":")).encode(),
                    message_id=row.id,
                    message_type=row.event_type,
                    content_type=STRUCTURED_CONTENT_TYPE,
                    timestamp=row.created_at,
                )
                self.expect.duplicates.update((consumer, row.id) for consumer in routes(row.routing_key))
        finally:
            await publisher.close()
        if chosen:
            self._fault(DUPLICATES, f"{len(chosen)} of {len(rows)} published events", len(chosen))

    async def _publish_poison(self, settings: Settings) -> None:
        publisher = ConfirmedPublisher(settings, "faults-poison")
        try:
            for kind, routing_key, message_id, body in poison_messages():
                await publisher.publish(
                    exchange=f"{settings.broker_namespace}.events",
                    routing_key=routing_key,
                    body=body,
                    message_id=message_id,
                    content_type=STRUCTURED_CONTENT_TYPE,
                )
                for consumer in routes(routing_key):
                    self.expect.poison.setdefault(consumer, set()).add(message_id)
                self._fault(POISON, f"{kind} ({routing_key})")
        finally:
            await publisher.close()

    def _track(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

    # --- quiescence

    async def _progress_counts(self, database: Database) -> tuple[int, int, list[OutboxEvent], int, int]:
        """(orders, open orders, outbox rows, inbox rows, ledger rows)."""
        async with database.sessions() as session:
            orders = await _count(session, models.Order)
            open_orders = await _count(
                session, models.Order, models.Order.status.not_in([s.value for s in TERMINAL_STATUSES])
            )
            outbox = list((await session.scalars(select(OutboxEvent))).all())
            inbox = await _count(session, InboxMessage)
            ledger = await _count(session, DeliveryRecord)
        return orders, open_orders, outbox, inbox, ledger

    # --- lane C: long outages (Temporal, PostgreSQL, SMTP)

    async def _outage_lane(self, stack: LocalStack, database: Database) -> None:
        plan = self.plan
        steps: list[Callable[[], Awaitable[None]]] = []
        for n in range(max(plan.temporal_restarts, plan.postgres_restarts, plan.smtp_outages)):
            if n < plan.temporal_restarts:
                steps.append(lambda: self._restart_temporal(stack, database))
            if n < plan.postgres_restarts:
                steps.append(lambda: self._restart_postgres(database))
            if n < plan.smtp_outages:
                steps.append(lambda: self._smtp_outage(stack, database))
        for n, step in enumerate(steps):
            await self._at_fraction(0.2 + 0.6 * n / max(1, len(steps)))
            await step()

    async def _restart_temporal(self, stack: LocalStack, database: Database) -> None:
        """The dev server stopped and started again on its state file; workers, API and the harness's own
        client reconnect by themselves."""
        in_flight, _ = await self._sagas_in_flight(database)
        started = time.monotonic()
        server = stack.components["temporal"]
        await server.stop()
        await server.start()
        await stack.wait_for_port(stack.temporal_port, "temporal")
        await _retrying_any(stack.wait_for_worker)
        if in_flight:
            self._fault(
                TEMPORAL_RESTART, f"{in_flight} sagas open; back in {time.monotonic() - started:.1f} s"
            )
        else:
            self.log("Temporal restart did not bite: no saga open")

    async def _restart_postgres(self, database: Database) -> None:
        in_flight, _ = await self._sagas_in_flight(database)
        started = time.monotonic()
        await pg_restart()
        await database.engine.dispose()  # the pool's connections died with the server
        await _retrying(lambda: self._sagas_in_flight_once(database))
        if in_flight:
            self._fault(
                POSTGRES_RESTART, f"{in_flight} sagas open; back in {time.monotonic() - started:.1f} s"
            )
        else:
            self.log("PostgreSQL restart did not bite: no saga open")

    async def _smtp_outage(self, stack: LocalStack, database: Database) -> None:
        """The mail server down for `smtp_down_seconds`: sends fail and wait in the retry queues."""
        before = await self._notification_retries(database)
        smtp = stack.components["smtp"]
        await smtp.stop()
        self.log("SMTP server stopped")
        await asyncio.sleep(self.plan.smtp_down_seconds)
        failed = await self._notification_retries(database) - before
        await smtp.start()
        await stack.wait_for_port(stack.smtp_port, "smtp")
        if failed:
            self._fault(SMTP_OUTAGE, f"{self.plan.smtp_down_seconds:.0f} s down, {failed} sends retried")
        else:
            self.log("SMTP outage did not bite: no send failed")

    async def _notification_retries(self, database: Database) -> int:
        async def read() -> int:
            async with database.sessions() as session:
                return await _count(
                    session,
                    DeliveryRecord,
                    DeliveryRecord.consumer == "notification",
                    DeliveryRecord.outcome == DeliveryOutcome.RETRY_SCHEDULED,
                )

        return await _retrying(read)

    async def _quiesce(self, stack: LocalStack, database: Database) -> tuple[bool, dict[str, int]]:
        """Wait until nothing moves: orders terminal, outbox published, inboxes complete, queues empty.
        Returns (reached within the plan's bound, the last queue depths)."""
        main_and_wait = [
            queue
            for name in REACTOR_NAMES
            for queue in stack.topology.queues_of(name)
            if not queue.endswith(".dlq")
        ]
        dlqs = {name: stack.topology.dead_letter_queue(name) for name in REACTOR_NAMES}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plan.quiescence_seconds
        previous: tuple[int, ...] | None = None
        depths: dict[str, int] = {}
        while True:
            try:
                snapshot_of_db = await _retrying(lambda: self._progress_counts(database))
            except DBAPIError as err:
                self.log(f"database unreadable: {err!r}")
                return False, depths
            orders, open_orders, outbox, inbox, ledger = snapshot_of_db
            expected_inbox = sum(len(routes(row.routing_key)) for row in outbox)
            pending = sum(row.status != PUBLISHED for row in outbox)
            try:
                states = await stack.queue_states([*main_and_wait, *dlqs.values()])
            except Exception as err:  # the broker may still be coming back; a failed probe is no answer
                self.log(f"queue probe failed: {err!r}")
                if loop.time() > deadline:
                    return False, depths
                previous = None
                await asyncio.sleep(1)
                continue
            depths = {queue: states[queue][0] for queue in main_and_wait}
            dead = {name: states[queue][0] for name, queue in dlqs.items()}
            done = (
                open_orders == 0
                and orders == len(self.expect.outcomes)
                and pending == 0
                and len(outbox) == orders
                and inbox == expected_inbox
                and not any(depths.values())
                and all(dead[name] >= len(self.expect.poison.get(name, ())) for name in REACTOR_NAMES)
            )
            snapshot = (orders, open_orders, len(outbox), pending, inbox, ledger, *dead.values())
            if done and snapshot == previous:
                return True, depths
            previous = snapshot if done else None
            if loop.time() > deadline:
                self.log(
                    f"no quiescence within {self.plan.quiescence_seconds:.0f}s: {open_orders} open orders, "
                    f"{pending} pending events, inbox {inbox}/{expected_inbox}, queued {sum(depths.values())}"
                )
                return False, depths
            await asyncio.sleep(1.0)


async def _retrying(read: Callable[[], Awaitable[T]], within: float = 60.0) -> T:
    """A read of the harness's own that rides out a database restart (the pool's connections die with it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await read()
        except (DBAPIError, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _retrying_any(wait: Callable[[], Awaitable[None]], within: float = 90.0) -> None:
    """`wait` again until it returns, whatever it raised meanwhile (a server still coming back)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await wait()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def pg_restart() -> None:
    """Restart the local PostgreSQL cluster (Debian's pg_ctlcluster, as .ci/run starts it)."""
    versions = sorted(Path("/etc/postgresql").iterdir())
    ctl = shutil.which("pg_ctlcluster") or "/usr/bin/pg_ctlcluster"
    process = await asyncio.create_subprocess_exec(
        ctl,
        "--skip-systemctl-redirect",
        versions[-1].name,
        "main",
        "restart",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster restart failed: {output.decode(errors='replace')}")


async def _count(session: Any, model: type[Any], *conditions: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


async def run_faults(
    plan: FaultPlan,
    workdir: Path | None = None,
    *,
    echo: Callable[[str], None] = print,
    broken: str | None = None,
) -> Report:
    """Run the harness once; its logs stay in `workdir` (a fresh temporary folder when None). `broken`
    names a deliberately broken variant of the product (`tests.faults.broken.VARIANTS`) to run instead."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="faults-"))
    return await FaultRun(plan, workdir, echo=echo, broken=broken).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.harness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--rate", type=float, help="orders placed per second")
    parser.add_argument("--worker-kills", type=int)
    parser.add_argument("--reactor-kills", type=int, help="per reactor")
    parser.add_argument("--broker-outages", type=int)
    parser.add_argument("--relay-kills", type=int)
    parser.add_argument("--duplicates", type=int)
    parser.add_argument("--poison-rounds", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--replicas", type=int, help="processes of each worker, relay and reactor")
    parser.add_argument("--temporal-restarts", type=int)
    parser.add_argument("--postgres-restarts", type=int)
    parser.add_argument("--smtp-outages", type=int)
    parser.add_argument("--broker-down-seconds", type=float)
    parser.add_argument("--smtp-down-seconds", type=float)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) even on success")
    parser.add_argument(
        "--broken",
        choices=sorted(VARIANTS),
        help="run a deliberately broken variant of the product: the run must FAIL (tests/faults/broken.py)",
    )
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key not in ("orders", "keep", "broken") and value is not None
    }
    plan = FaultPlan.for_orders(args.orders, **overrides)
    workdir = Path(tempfile.mkdtemp(prefix="faults-"))
    report = asyncio.run(run_faults(plan, workdir, broken=args.broken))
    if args.broken:
        print(f"Deliberately broken product: {args.broken} ({VARIANTS[args.broken].bug})", flush=True)
    print(report.render(), flush=True)
    passed = report.ok
    if passed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs: {workdir}/logs", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
