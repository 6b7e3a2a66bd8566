"""Gates that hold a saga step open, so a test can act while the saga is at a given stage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity

from activities.messages import OrderRef, StepOutcome
from tests.conftest import activity_name


class Gate:
    def __init__(self, step: Callable[[OrderRef], Awaitable[StepOutcome]]) -> None:
        self._step = step
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    def activity(self) -> Callable[..., Any]:
        """An activity with the step's name that waits for `open()` and then runs the real step."""

        @activity.defn(name=activity_name(self._step))
        async def held_step(order: OrderRef) -> StepOutcome:
            self.entered.set()
            await self.opened.wait()
            return await self._step(order)

        return held_step

    async def wait_entered(self, within: float = 20) -> None:
        await asyncio.wait_for(self.entered.wait(), within)

    def open(self) -> None:
        self.opened.set()
