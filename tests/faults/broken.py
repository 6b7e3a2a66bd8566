"""Deliberately broken variants of the product, to show that the fault harness fails on them.

    python -m tests.faults.harness --orders 30 --broken wrong-points    # must end FAIL
    python -m tests.faults.broken VARIANT MODULE [ARGS...]              # what the harness launches

Each variant patches one thing in one component, then runs that component's usual module as `__main__`:

| variant | component | the bug |
| --- | --- | --- |
| wrong-points | loyalty reactor | one point per cent instead of per whole currency unit |
| refuse-cancels | API | every cancel answered 409, as if shipping had started |
| skip-refunds | worker | the provider is never asked to refund (the database records a refund all the same) |
| double-charge | worker | a retried charge is charged again at the provider under a fresh key |
"""

from __future__ import annotations

import importlib
import sys
import uuid
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Variant:
    kind: str  # the component kind (ops.launcher.MODULES) it replaces
    bug: str


VARIANTS = {
    "wrong-points": Variant("reactor", "one point per cent instead of per whole currency unit"),
    "refuse-cancels": Variant("api", "every cancel refused with 409"),
    "skip-refunds": Variant("worker", "refunds never reach the provider"),
    "double-charge": Variant("worker", "a charge retried after a lost answer is charged again"),
}


def _patch(variant: str) -> None:
    if variant == "wrong-points":
        from reactors.loyalty import reactor as loyalty

        loyalty.points_for = lambda total_amount, currency: total_amount
    elif variant == "refuse-cancels":
        from activities.messages import CancelOutcome
        from api import commands
        from domain.model import OrderStatus

        async def refuse(*_args: Any, **_kwargs: Any) -> CancelOutcome:
            return CancelOutcome(False, OrderStatus.PAYMENT_CHARGED, "shipping has started")

        setattr(commands, "request_cancel", refuse)  # noqa: B010 (not re-exported there)
    elif variant == "skip-refunds":
        from tests.faults.provider_worker import JournaledPaymentGateway

        async def no_refund(self: JournaledPaymentGateway, request: Any) -> str:
            return "re_never_made"

        JournaledPaymentGateway.refund = no_refund  # type: ignore[method-assign]
    elif variant == "double-charge":
        from tests.faults.provider_worker import JournaledPaymentGateway

        original = JournaledPaymentGateway.charge

        async def charge_again(self: JournaledPaymentGateway, request: Any) -> str:
            if request.idempotency_key in self.charges:  # a retry: a broken client makes a new key
                request = replace(
                    request, idempotency_key=f"{request.idempotency_key}:{uuid.uuid4().hex[:6]}"
                )
            return await original(self, request)

        JournaledPaymentGateway.charge = charge_again  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")


def main() -> None:
    variant, module, *args = sys.argv[1:]
    _patch(variant)
    sys.argv = [module, *args]
    # The module's own main(), imported (not re-executed as __main__, which would bypass the patch).
    imported = importlib.import_module(module)
    if not hasattr(imported, "main"):
        imported = importlib.import_module(f"{module}.__main__")
    imported.main()


if __name__ == "__main__":
    main()
