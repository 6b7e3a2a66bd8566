"""The saga's activity classes, and the names of their compensations (derived, never listed by hand)."""

from __future__ import annotations

from activities.inventory import InventoryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.shipping import ShippingActivities
from activities.steps import is_compensation, step_name

SAGA_ACTIVITY_CLASSES: tuple[type, ...] = (
    InventoryActivities,
    PaymentActivities,
    ShippingActivities,
    OrderActivities,
)

# Activity names of every `@compensation` of those classes: release_inventory, refund_payment, ...
COMPENSATION_NAMES: frozenset[str] = frozenset(
    step_name(member)
    for cls in SAGA_ACTIVITY_CLASSES
    for member in vars(cls).values()
    if is_compensation(member)
)
