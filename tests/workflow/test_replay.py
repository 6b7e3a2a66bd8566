"""Recorded histories replay against the current workflow code: this version's and the previous one's.

- `histories/*.json`: every saga path recorded on the current code (re-record with
  `pytest tests/workflow/test_saga_paths.py tests/workflow/test_cancel_anywhere.py --record-histories`).
- `histories/v1/*.json`: the paths recorded on the code before patch `cancel-safe-unwind`. Sagas
  like these may still be running when the new code is deployed, so they must replay on it (the
  patch's old branch); they also replay on the frozen copy of that code (`previous_workflow.py`),
  which proves the copy is what recorded them. Remove them with the patch's old branch
  (`deprecate_patch`), once no saga started before the patch is open or queried any more.

A change that would break running sagas (non-determinism) fails here. The procedure for changing
the workflow is in the README ("Changing the workflow safely").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from orchestrator.workflow import CANCEL_SAFE_UNWIND, OrderWorkflow
from tests.conftest import HISTORIES
from tests.workflow.holds import patches_recorded
from tests.workflow.previous_workflow import PreviousOrderWorkflow

pytestmark = pytest.mark.workflow

PREVIOUS = HISTORIES / "v1"
CURRENT_RECORDED = sorted(HISTORIES.glob("*.json"))
PREVIOUS_RECORDED = sorted(PREVIOUS.glob("*.json"))
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


def test_every_saga_path_has_a_recorded_history_of_each_version() -> None:
    assert {path.stem for path in CURRENT_RECORDED} == SAGA_PATHS | CANCEL_PATHS
    assert {path.stem for path in PREVIOUS_RECORDED} == SAGA_PATHS


def test_current_histories_took_the_patched_branch_and_previous_ones_did_not() -> None:
    for path in CURRENT_RECORDED:
        assert CANCEL_SAFE_UNWIND in patches_recorded(load(path)), path.name
    for path in PREVIOUS_RECORDED:
        assert patches_recorded(load(path)) == set(), path.name


@pytest.mark.parametrize("recorded", CURRENT_RECORDED, ids=[path.stem for path in CURRENT_RECORDED])
async def test_current_history_replays_deterministically(recorded: Path) -> None:
    result = await Replayer(workflows=[OrderWorkflow]).replay_workflow(
        load(recorded), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@pytest.mark.parametrize("recorded", PREVIOUS_RECORDED, ids=[f"v1-{path.stem}" for path in PREVIOUS_RECORDED])
async def test_previous_version_history_replays_on_the_current_code(recorded: Path) -> None:
    result = await Replayer(workflows=[OrderWorkflow]).replay_workflow(
        load(recorded), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@pytest.mark.parametrize("recorded", PREVIOUS_RECORDED, ids=[f"v1-{path.stem}" for path in PREVIOUS_RECORDED])
async def test_previous_version_history_is_the_frozen_previous_code(recorded: Path) -> None:
    result = await Replayer(workflows=[PreviousOrderWorkflow]).replay_workflow(
        load(recorded), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@pytest.mark.parametrize("name", ["happy", "payment_declined"])
async def test_a_patched_history_does_not_replay_on_the_previous_code(name: str) -> None:
    # Why a deploy stops the old workers (README, "Changing the workflow safely"): an old worker handed
    # a saga that recorded the patch fails its workflow task until a new worker takes it.
    result = await Replayer(workflows=[PreviousOrderWorkflow]).replay_workflow(
        load(HISTORIES / f"{name}.json"), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None
    assert "patch marker" in str(result.replay_failure)
