"""The compensation stack: reverse order, every compensation runs, cancellation cannot cut it short."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.compensation import Compensations, run_to_completion

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


async def test_run_to_completion_absorbs_every_cancel_and_reports_it() -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def closing_write() -> str:
        started.set()
        await finish.wait()
        return "closed"

    running = asyncio.create_task(run_to_completion(closing_write()))
    await started.wait()
    for _ in range(3):  # repeated cancels
        running.cancel()
        await asyncio.sleep(0)
        assert not running.done()
    finish.set()

    assert await running == ("closed", True)


async def test_run_to_completion_without_a_cancel() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await run_to_completion(work()) == (7, False)


async def test_run_to_completion_raises_what_the_work_raises_after_a_cancel() -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def broken() -> None:
        started.set()
        await finish.wait()
        raise RuntimeError("broke")

    running = asyncio.create_task(run_to_completion(broken()))
    await started.wait()
    running.cancel()
    await asyncio.sleep(0)
    finish.set()

    with pytest.raises(RuntimeError, match="broke"):
        await running


async def test_run_to_completion_keeps_the_result_when_the_cancel_lands_as_it_ends() -> None:
    finish = asyncio.Event()

    async def work() -> str:
        await finish.wait()
        return "done"

    running = asyncio.create_task(run_to_completion(work()))
    await asyncio.sleep(0)
    finish.set()  # the work ends on the next turn of the loop, before the shield hands its result over
    await asyncio.sleep(0)
    running.cancel()

    assert await running == ("done", True)


async def test_run_to_completion_lets_a_cancel_of_the_work_itself_through() -> None:
    # A workflow evicted from the worker's cache has every task cancelled, the work's included.
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    inner: list[asyncio.Task[None]] = []

    async def evictable() -> None:
        inner.append(asyncio.current_task())  # type: ignore[arg-type]
        await work()

    running = asyncio.create_task(run_to_completion(evictable()))
    await started.wait()
    running.cancel()
    inner[0].cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
