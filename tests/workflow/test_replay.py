"""Recorded histories of every saga path replay against the current workflow code.

A change that would break running sagas (non-determinism) fails here. After an intended,
versioned change, re-record with `pytest tests/workflow/test_saga_paths.py --record-histories`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from orchestrator.workflow import OrderWorkflow
from tests.conftest import HISTORIES

pytestmark = pytest.mark.workflow

RECORDED = sorted(HISTORIES.glob("*.json"))
EXPECTED_PATHS = {
    "happy",
    "out_of_stock",
    "payment_declined",
    "shipping_unavailable",
    "flaky_payment",
    "cancel_while_charging",
    "cancel_refused_shipping",
    "workflow_cancelled",
}


def test_every_saga_path_has_a_recorded_history() -> None:
    assert {path.stem for path in RECORDED} == EXPECTED_PATHS


@pytest.mark.parametrize("recorded", RECORDED, ids=[path.stem for path in RECORDED])
async def test_recorded_history_replays_deterministically(recorded: Path) -> None:
    history = WorkflowHistory.from_json(f"replay-{recorded.stem}", recorded.read_text())
    result = await Replayer(workflows=[OrderWorkflow]).replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
