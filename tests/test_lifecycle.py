"""The run lifecycle both server sides share: resume, finish, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alphafed_flwr.adapters.lifecycle import failures_recorded, finish_summary, resumed_summary
from alphafed_flwr.adapters.outputs import RunSummary
from alphafed_flwr.api.errors import TaskFailed
from alphafed_flwr.strategies.errors import StrategyError


def test_a_resumed_run_keeps_the_earlier_rounds_and_drops_later_csv_rows(tmp_path: Path) -> None:
    csv = tmp_path / "metrics" / "clients" / "client-0.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("round,acc\n1,0.1\n2,0.2\n3,0.3\n")
    previous = {"rounds": [{"round": 1}, {"round": 2}], "started_at": "then"}
    summary = resumed_summary(tmp_path, {"x": 1}, {"summary": previous}, 2)
    assert csv.read_text().splitlines() == ["round,acc", "1,0.1", "2,0.2"]
    assert summary.data["rounds"] == previous["rounds"] and summary.data["started_at"] == "then"
    assert summary.data["resumed_from_round"] == 2 and summary.data["config"] == {"x": 1}


def test_finish_records_rounds_the_last_test_seconds_and_the_error(tmp_path: Path) -> None:
    summary = RunSummary(tmp_path, {})
    summary.add_round({"round": 1, "test": {"acc": 0.5}})
    summary.add_round({"round": 2, "test": {}})
    data = finish_summary(summary, "failed", 1.23456, "boom", outputs={"model": "m"})
    written = json.loads((tmp_path / "summary.json").read_text())
    for content in (data, written):
        assert content["status"] == "failed" and content["rounds_completed"] == 2
        assert content["final_test"] == {"acc": 0.5} and content["run_seconds"] == 1.235
        assert content["error"] == "boom" and content["outputs"] == {"model": "m"}
    assert "error" not in finish_summary(RunSummary(tmp_path, {}), "completed")


def test_a_strategy_error_fails_the_task_and_anything_else_is_raised_as_it_is() -> None:
    reasons: list[str] = []
    with pytest.raises(TaskFailed, match="round 2 failed"), failures_recorded(reasons.append):
        raise StrategyError("round 2 failed")
    with pytest.raises(KeyError), failures_recorded(reasons.append):
        raise KeyError("k")
    with failures_recorded(reasons.append):
        pass
    assert reasons == ["round 2 failed", "KeyError: 'k'"]
