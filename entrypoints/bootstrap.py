"""The composition root: the one place where settings, adapters, activities, the relay and the reactors are
wired together. Every process's `main()` (the modules beside this one) builds what it runs from here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.inventory import InventoryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.providers import (
    PaymentGateway,
    ShippingCarrier,
    SimulatedCarrier,
    SimulatedPaymentGateway,
)
from activities.retention import RetentionActivities
from activities.shipping import ShippingActivities
from infra.db import Database
from infra.settings import Settings
from messaging.relay import OutboxRelay
from messaging.topology import Topology
from reactors.base import Reactor
from reactors.registry import REACTORS
from reactors.runtime import ReactorRuntime


def saga_activities(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    gateway: PaymentGateway | None = None,
    carrier: ShippingCarrier | None = None,
) -> Sequence[Callable[..., Any]]:
    """Every activity of the order saga, bound to its dependencies (simulated providers by default)."""
    gateway = gateway or SimulatedPaymentGateway(settings.simulated_payment_latency_ms / 1000)
    carrier = carrier or SimulatedCarrier()
    inventory = InventoryActivities(sessions)
    payments = PaymentActivities(sessions, gateway)
    shipping = ShippingActivities(sessions, carrier)
    orders = OrderActivities(sessions)
    return [
        inventory.reserve_inventory,
        inventory.release_inventory,
        payments.charge_payment,
        payments.refund_payment,
        shipping.create_shipment,
        shipping.cancel_shipment,
        orders.mark_order_shipped,
        orders.mark_order_status,
        orders.close_order,
    ]


def worker_activities(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> Sequence[Callable[..., Any]]:
    """What the worker runs: the saga's activities and the retention run's."""
    return [*saga_activities(settings, sessions), RetentionActivities(sessions, settings).apply_retention]


# --- events: outbox relay, broker topology, reactors


def outbox_relay(
    settings: Settings, database: Database, reactors: Sequence[Reactor] = REACTORS
) -> OutboxRelay:
    """The relay, declaring the queues of `reactors` so that their events are routable from the start."""
    return OutboxRelay(
        settings,
        database.sessions,
        Topology.from_settings(settings),
        [reactor.subscription for reactor in reactors],
    )


def reactor_runtimes(
    settings: Settings, database: Database, reactors: Sequence[Reactor] = REACTORS
) -> list[ReactorRuntime]:
    """One runtime (own connections) per reactor."""
    topology = Topology.from_settings(settings)
    return [ReactorRuntime(reactor, settings, database.sessions, topology) for reactor in reactors]
