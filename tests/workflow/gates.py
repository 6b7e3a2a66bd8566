"""Gates that hold a saga step open, so a test can act while the saga is at a given stage."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity

from tests.conftest import activity_name


class Gate:
    """Holds one activity (a step, a compensation or a local step) until `open()`.

    The held activity has the step's name and argument type, waits for `open()`, then runs the real
    step. `entered` is set each time an attempt reaches the gate.
    """

    def __init__(self, step: Callable[[Any], Awaitable[Any]]) -> None:
        self._step = step
        self.name = activity_name(step)
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    def activity(self) -> Callable[..., Any]:
        """An activity with the step's name and signature that waits for `open()`, then runs the step."""
        hints = typing.get_type_hints(self._step)
        [parameter] = inspect.signature(self._step).parameters

        async def held_step(argument: Any) -> Any:
            self.entered.set()
            await self.opened.wait()
            return await self._step(argument)

        # The data converter decodes the argument by these hints, as it would for the real step.
        held_step.__annotations__ = {"argument": hints[parameter], "return": hints["return"]}
        return activity.defn(name=self.name)(held_step)

    async def wait_entered(self, within: float = 20) -> None:
        await asyncio.wait_for(self.entered.wait(), within)

    def open(self) -> None:
        self.opened.set()
