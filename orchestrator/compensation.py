"""A stack of compensations for a saga: registered before each step, run in reverse, shielded.

Pure asyncio, so it works inside a Temporal workflow (deterministic) and in unit tests alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

Compensation = Callable[[], Awaitable[object]]
T = TypeVar("T")


async def run_to_completion(work: Awaitable[T]) -> tuple[T, bool]:
    """Await `work` to its end, whatever cancels reach the awaiting task meanwhile.

    Returns `(result, cancelled)`: the work's result and whether at least one cancel arrived (each
    is absorbed; the caller decides what it means once the work is done). Raises what the work
    raises. Only a cancel of the work itself gets through: evicting a workflow from the worker's
    cache cancels every task it has, and that must not be held up.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            # Absorbed. Shielding a task that has ended since (the cancel came just as it ended)
            # hands over its outcome at once.
            cancelled = True


@dataclass
class CompensationReport:
    completed: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)


class Compensations:
    def __init__(self) -> None:
        self._stack: list[tuple[str, Compensation]] = []

    def register(self, name: str, compensation: Compensation) -> None:
        """Register the undo of a step *before* the step runs: a step that fails half-way, or whose
        result is lost, still gets undone. Each compensation must therefore be idempotent and a
        no-op when its step did nothing."""
        self._stack.append((name, compensation))

    @property
    def registered(self) -> list[str]:
        return [name for name, _ in self._stack]

    async def run(self) -> CompensationReport:
        """Run every registered compensation once, newest first, to completion.

        A cancellation arriving meanwhile does not stop them (the saga must end clean); it is
        re-raised once they are done. A failing compensation does not stop the others.
        """
        report, cancelled = await run_to_completion(self._run_in_reverse())
        if cancelled:
            raise asyncio.CancelledError
        return report

    async def _run_in_reverse(self) -> CompensationReport:
        report = CompensationReport()
        while self._stack:
            name, compensation = self._stack.pop()
            try:
                await compensation()
            except Exception as err:
                report.failed[name] = err
            else:
                report.completed.append(name)
        return report
