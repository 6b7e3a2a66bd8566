"""The compensation stack: reverse order, every compensation runs, cancellation cannot cut it short."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.compensation import Compensations

pytestmark = pytest.mark.unit


def _recorder(log: list[str], name: str, fail: bool = False):  # type: ignore[no-untyped-def]
    async def compensate() -> None:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError(f"{name} broke")
        log.append(name)

    return compensate


async def test_runs_in_reverse_order_of_registration() -> None:
    log: list[str] = []
    compensations = Compensations()
    for name in ("release", "refund", "cancel_shipment"):
        compensations.register(name, _recorder(log, name))

    report = await compensations.run()

    assert log == ["cancel_shipment", "refund", "release"]
    assert report.completed == log
    assert report.failed == {}


async def test_a_failing_compensation_does_not_stop_the_others() -> None:
    log: list[str] = []
    compensations = Compensations()
    compensations.register("release", _recorder(log, "release"))
    compensations.register("refund", _recorder(log, "refund", fail=True))

    report = await compensations.run()

    assert log == ["release"]
    assert list(report.failed) == ["refund"]
    assert str(report.failed["refund"]) == "refund broke"


async def test_runs_each_compensation_once() -> None:
    log: list[str] = []
    compensations = Compensations()
    compensations.register("release", _recorder(log, "release"))
    await compensations.run()
    second = await compensations.run()
    assert log == ["release"]
    assert second.completed == []


async def test_cancellation_waits_for_compensations_then_propagates() -> None:
    log: list[str] = []
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow_refund() -> None:
        started.set()
        await finish.wait()
        log.append("refund")

    compensations = Compensations()
    compensations.register("release", _recorder(log, "release"))
    compensations.register("refund", slow_refund)
    running = asyncio.create_task(compensations.run())
    await started.wait()

    running.cancel()
    await asyncio.sleep(0.01)
    assert not running.done()  # shielded: still compensating
    finish.set()

    with pytest.raises(asyncio.CancelledError):
        await running
    assert log == ["refund", "release"]
