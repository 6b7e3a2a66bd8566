"""Recorded histories replay against the current workflow code: this version's and the previous ones'.

- `histories/*.json`: every saga path recorded on the current code (re-record with
  `pytest tests/workflow/test_saga_paths.py tests/workflow/test_cancel_anywhere.py --record-histories`).
- `histories/v2/*.json`: every path recorded on the code before patch `lean-saga` (version 2);
  `histories/v1/*.json`: the paths recorded before patch `cancel-safe-unwind` (version 1). Sagas like
  these may still be running when the new code is deployed, so they must replay on it (the patches' old
  branches); each set also replays on the frozen copy of its code (`previous/v<N>.py`), which proves the
  copy is what recorded it. Remove a set with its patch's old branch (`deprecate_patch`), once no saga
  started before the patch is open or queried any more.

Every replay here runs in the SDK's sandbox (stated, not left to the default), whatever WORKFLOW_SANDBOX
says for production workers: workflow code that reads the clock, does I/O or imports something
non-deterministic fails here even though an unsandboxed worker would run it.

A change that would break running sagas (non-determinism) fails here. The procedure for changing
the workflow is in the README ("Changing the workflow safely").
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.workflow import CANCEL_SAFE_UNWIND, LEAN_SAGA, OrderWorkflow
from tests.conftest import HISTORIES
from tests.workflow.clock import ReadsTheClock
from tests.workflow.holds import patches_recorded
from tests.workflow.previous import v1, v2

pytestmark = pytest.mark.workflow

CURRENT_RECORDED = sorted(HISTORIES.glob("*.json"))
# Each earlier version: its recorded histories, its frozen code, the patches its histories carry.
PREVIOUS = {
    "v1": (sorted((HISTORIES / "v1").glob("*.json")), v1.PreviousOrderWorkflow, set[str]()),
    "v2": (sorted((HISTORIES / "v2").glob("*.json")), v2.PreviousOrderWorkflow, {CANCEL_SAFE_UNWIND}),
}
PREVIOUS_RECORDED = [(version, path) for version, (paths, _, _) in PREVIOUS.items() for path in paths]
PREVIOUS_IDS = [f"{version}-{path.stem}" for version, path in PREVIOUS_RECORDED]
SAGA_PATHS = {
    "happy",
    "out_of_stock",
    "payment_declined",
    "shipping_unavailable",
    "flaky_payment",
    "cancel_while_charging",
    "cancel_refused_shipping",
    "workflow_cancelled",
}
# Recorded by test_cancel_anywhere.py: a workflow cancel inside each step and at each boundary.
CANCEL_PATHS = {
    *(
        f"cancel_inside_{step}"
        for step in (
            "reserve_inventory",
            "charge_payment",
            "create_shipment",
            "mark_order_shipped",
            "mark_order_status",
            "cancel_shipment",
            "refund_payment",
            "release_inventory",
            "close_order",
        )
    ),
    *(
        f"cancel_at_{boundary}"
        for boundary in (
            "before_reserve",
            "reserve_charge",
            "charge_ship",
            "ship_mark_shipped",
            "declined_unwind",
            "refund_release",
        )
    ),
}


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.parent.name}-{path.stem}", path.read_text())


def sandboxed_replayer(workflow: type) -> Replayer:
    """A replayer with the sandboxed runner (stated, not left to the default): it is what CI relies on."""
    return Replayer(workflows=[workflow], workflow_runner=SandboxedWorkflowRunner())


def test_every_saga_path_has_a_recorded_history_of_each_version() -> None:
    assert {path.stem for path in CURRENT_RECORDED} == SAGA_PATHS | CANCEL_PATHS
    assert {path.stem for path in PREVIOUS["v2"][0]} == SAGA_PATHS | CANCEL_PATHS
    assert {path.stem for path in PREVIOUS["v1"][0]} == SAGA_PATHS


def test_each_history_took_the_branches_of_its_version() -> None:
    for path in CURRENT_RECORDED:
        # A saga on lean-saga never asks for cancel-safe-unwind: its code has it.
        assert patches_recorded(load(path)) == {LEAN_SAGA}, path.name
    for version, path in PREVIOUS_RECORDED:
        assert patches_recorded(load(path)) == PREVIOUS[version][2], (version, path.name)


@pytest.mark.parametrize("recorded", CURRENT_RECORDED, ids=[path.stem for path in CURRENT_RECORDED])
async def test_current_history_replays_deterministically(recorded: Path) -> None:
    result = await sandboxed_replayer(OrderWorkflow).replay_workflow(
        load(recorded), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@pytest.mark.parametrize(("version", "recorded"), PREVIOUS_RECORDED, ids=PREVIOUS_IDS)
async def test_previous_version_history_replays_on_the_current_code(version: str, recorded: Path) -> None:
    result = await sandboxed_replayer(OrderWorkflow).replay_workflow(
        load(recorded), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@pytest.mark.parametrize(("version", "recorded"), PREVIOUS_RECORDED, ids=PREVIOUS_IDS)
async def test_previous_version_history_is_its_frozen_code(version: str, recorded: Path) -> None:
    frozen = PREVIOUS[version][1]
    result = await sandboxed_replayer(frozen).replay_workflow(load(recorded), raise_on_replay_failure=True)
    assert result.replay_failure is None


@pytest.mark.parametrize("name", ["happy", "payment_declined"])
@pytest.mark.parametrize("version", list(PREVIOUS))
async def test_a_current_history_does_not_replay_on_a_previous_code(version: str, name: str) -> None:
    # Why a deploy stops the old workers (README, "Changing the workflow safely"): an old worker handed
    # a saga that recorded a later patch fails its workflow task until a new worker takes it.
    result = await sandboxed_replayer(PREVIOUS[version][1]).replay_workflow(
        load(HISTORIES / f"{name}.json"), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


async def test_the_sandboxed_replay_catches_what_an_unsandboxed_worker_runs(
    temporal_env: WorkflowEnvironment,
) -> None:
    # Why CI may rely on the replay tests while production runs unsandboxed (WORKFLOW_SANDBOX off): a
    # workflow reading the wall clock completes on an unsandboxed worker, and its replay here fails.
    task_queue = f"clock-{uuid.uuid4().hex[:8]}"
    client = temporal_env.client
    async with Worker(
        client, task_queue=task_queue, workflows=[ReadsTheClock], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        handle = await client.start_workflow(ReadsTheClock.run, id=task_queue, task_queue=task_queue)
        await handle.result()
    result = await sandboxed_replayer(ReadsTheClock).replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    assert "datetime.now" in str(result.replay_failure)
