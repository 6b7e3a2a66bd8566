"""Gates that hold a saga step open, so a test can act while the saga is at a given stage."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from temporalio import activity

from tests.conftest import activity_name


class Gate:
    """Holds one activity (a step, a compensation or a local step) until `open()`.

    The held activity has the step's name and argument type, waits for `open()`, then runs the real
    step. `entered` is set each time an attempt reaches the gate; `arrivals` counts them.
    """

    def __init__(self, step: Callable[[Any], Awaitable[Any]], orders: Collection[str] | None = None) -> None:
        """`orders`: hold only these orders (by the argument's `order_id`); None: every order."""
        self._step = step
        self._orders = None if orders is None else frozenset(orders)
        self.name = activity_name(step)
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.arrivals = 0

    def activity(self) -> Callable[..., Any]:
        """An activity with the step's name and signature that waits for `open()`, then runs the step."""
        hints = typing.get_type_hints(self._step)
        [parameter] = inspect.signature(self._step).parameters

        async def held_step(argument: Any) -> Any:
            if self._orders is None or argument.order_id in self._orders:
                self.arrivals += 1
                self.entered.set()
                await self.opened.wait()
            return await self._step(argument)

        # The data converter decodes the argument by these hints, as it would for the real step.
        held_step.__annotations__ = {"argument": hints[parameter], "return": hints["return"]}
        return activity.defn(name=self.name)(held_step)

    async def wait_entered(self, within: float = 20, *, count: int = 1) -> None:
        """Until `count` attempts (all orders together) have reached the gate."""
        async with asyncio.timeout(within):
            while self.arrivals < count:
                self.entered.clear()
                await self.entered.wait()

    def open(self) -> None:
        self.opened.set()
