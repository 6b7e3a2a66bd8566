"""The launcher does not swallow failures: a component that died on its own is reported even after a planned
restart, and a broker probe that fails raises instead of reading as empty queues."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops.launcher import LocalStack, StackOptions
from ops.processes import Component
from ops.provisioning import free_port

pytestmark = pytest.mark.integration


def _component(tmp_path: Path, code: str) -> Component:
    return Component("probe", [sys.executable, "-c", code], {}, tmp_path / "probe.log")


async def test_a_crash_is_reported_although_the_component_was_restarted(tmp_path: Path) -> None:
    component = _component(tmp_path, "import sys; sys.exit(3)")
    await component.start()
    assert component.process is not None
    await component.process.wait()
    await component.start()  # the planned restart: must not hide the exit code 3
    assert component.process is not None
    await component.process.wait()
    component.note_exit()
    assert component.crashes == [3, 3]


async def test_kills_and_stops_by_the_launcher_are_not_crashes(tmp_path: Path) -> None:
    component = _component(tmp_path, "import time; time.sleep(60)")
    await component.start()
    await component.kill()
    await component.start()
    await component.stop()
    component.note_exit()
    assert component.crashes == []
    assert component.kills == 1


async def test_a_failed_queue_probe_raises_instead_of_reading_empty(tmp_path: Path) -> None:
    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    options = StackOptions(
        workdir=tmp_path,
        database_url="sqlite+aiosqlite:///unused.db",
        extra_env={"RABBITMQ_URL": nobody, "BROKER_CALL_TIMEOUT_SECONDS": "2"},
    )
    stack = LocalStack(options)
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        await stack.queue_states(["any.queue"])


async def test_a_queue_that_does_not_exist_reads_as_empty(tmp_path: Path) -> None:
    stack = LocalStack(StackOptions(workdir=tmp_path, database_url="sqlite+aiosqlite:///unused.db"))
    states = await stack.queue_states([f"{stack.options.namespace}.nothing-here"])
    assert states == {f"{stack.options.namespace}.nothing-here": (0, 0)}
