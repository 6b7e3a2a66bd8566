"""Many orders competing for scarce stock: never oversold, every saga ends cleanly."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import func, select

from domain.model import OrderStatus
from infra import models
from orchestrator.client import place_order
from tests.conftest import SagaHarness
from tests.support import add_product, order_command, product

pytestmark = [pytest.mark.integration, pytest.mark.workflow]

ORDERS = 50
UNITS = 10


async def test_fifty_orders_for_ten_units_ship_exactly_ten(saga: SagaHarness) -> None:
    await add_product(saga.database.sessions, "SKU-SCARCE", on_hand=UNITS)
    commands = [order_command(items={"SKU-SCARCE": 1}, customer_id=f"c{i}") for i in range(ORDERS)]

    handles = await asyncio.gather(
        *(place_order(saga.database.sessions, saga.client, saga.task_queue, c) for c in commands)
    )
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)

    outcomes = Counter((r.status, r.failure_reason) for r in results)
    assert outcomes == {
        (OrderStatus.SHIPPED, None): UNITS,
        (OrderStatus.FAILED, "OUT_OF_STOCK"): ORDERS - UNITS,
    }
    stock = await product(saga.database.sessions, "SKU-SCARCE")
    assert (stock.on_hand, stock.reserved) == (0, 0)
    async with saga.database.sessions() as session:
        charged = await session.scalar(
            select(func.count()).select_from(models.Payment).where(models.Payment.status == "succeeded")
        )
        statuses = Counter((await session.scalars(select(models.Order.status))).all())
    assert charged == UNITS
    assert statuses == {"SHIPPED": UNITS, "FAILED": ORDERS - UNITS}
