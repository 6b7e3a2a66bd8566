"""`make bench` at tiny sizes (`--quick`), two variants: it runs to the end, writes its JSON in the shape the
README describes and prints the machine-readable last line. Figures are not checked (a benchmark prints)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPONENTS = {"temporal", "worker", "api", "relay", "smtp", "bench client", "bare-worker"}
REACTORS = {"reactor-notification", "reactor-loyalty", "reactor-analytics"}


def test_quick_bench_with_two_variants(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.e2e", "--quick", "--results", str(tmp_path),
            "--variant", "a", "--variant", "b LOG_LEVEL=ERROR",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.fullmatch(r"e2e_to_bare_ratio: \d+\.\d{3}", done.stdout.strip().splitlines()[-1])
    assert "switching to variant b" in done.stdout

    (path,) = tmp_path.glob("bench-*.json")
    results = json.loads(path.read_text())
    assert results["order"] == ["a", "b"]
    assert results["variants"] == {"a": {}, "b": {"LOG_LEVEL": "ERROR"}}
    assert set(results["workflow_runners"]) == {"a", "b"}
    assert all(runner.endswith("WorkflowRunner") for runner in results["workflow_runners"].values())
    for name in ("a", "b"):
        (run,) = results["repeats"][name]
        cost = run["e2e"]["cost_per_order"]
        assert set(cost["cpu_ms"]) >= COMPONENTS | REACTORS
        assert {"postgresql (bench db)", "rabbitmq (node)", "rabbitmq (node), net"} <= set(cost["cpu_ms"])
        # Work counted in every process that touches the database, and the sink's replies.
        assert {"worker", "api", "relay", *REACTORS} <= {
            c for c, w in cost["work"].items() if w.get("db_round_trips")
        }
        assert cost["work"]["smtp"]["smtp_replies"] > 0
        assert run["e2e"]["temporal_per_order"]["billable_actions"] > 0
        assert run["bare"]["temporal_per_workflow"]["round_trips"] > 0
        extras = results["extras"][name]
        assert {"p50", "p99"} <= set(extras["e2e"]["post_latency_ms"])
        assert {"p50", "p99"} <= set(extras["start_workflow"]["start_rpc_ms"])
        for reactor in ("notification", "loyalty", "analytics"):
            consume = extras["consume"][reactor]
            assert len(consume["raw"]) == 2  # the raw client just before and just after
            assert consume["db_round_trips_per_message"] > 0
        assert extras["consume"]["notification"]["smtp_round_trips_per_message"] > 0
        summary = results["summary"]["variants"][name]
        assert {"median", "min", "max"} <= set(summary["ratio"])
    summary = results["summary"]
    assert set(summary["floor_drift"]) == {"start", "end", "drift", "over_limit"}
    assert len(summary["targets"]) == 7
    assert summary["e2e_to_bare_ratio"] == summary["variants"]["a"]["ratio"]["median"]
