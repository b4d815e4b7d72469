"""The bench matrix: ratios against bsp and DDP of the same repeat, and a real (tiny) matrix run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weaksync.bench.matrix import Cell, markdown, plan, run_matrix, summarise


def test_plan_interleaves_modes_within_each_repeat() -> None:
    cells = plan(["none", "spikes"], ["bsp", "backup"], 2)
    assert [c.name for c in cells[:4]] == ["none__bsp__0", "none__backup__0", "spikes__bsp__0", "spikes__backup__0"]
    assert len(cells) == 8 and cells[-1] == Cell("spikes", "backup", 1)


def test_ratios_pair_runs_of_the_same_repeat() -> None:
    def row(speed: float, tta: float | None) -> dict:
        return {"steps_per_s": speed, "time_to_accuracy": tta, "final_accuracy": 0.97, "train_seconds": 5.0}

    rows = {
        Cell("none", "bsp", 0): row(100, 4.0), Cell("none", "backup", 0): row(200, 2.0),
        Cell("none", "ddp", 0): row(120, 8.0),
        Cell("none", "bsp", 1): row(50, 4.0), Cell("none", "backup", 1): row(150, None),
        Cell("none", "ddp", 1): row(60, 8.0),
    }  # fmt: skip
    table = {e["mode"]: e for e in summarise(rows, ["none"], ["bsp", "backup", "ddp"])}
    assert table["backup"]["speed_vs_bsp"] == 2.5  # median of 2.0 and 3.0
    assert table["backup"]["tta_vs_bsp"] == 0.5  # the repeat that never reached the target has no ratio
    assert table["backup"]["tta_vs_ddp"] == 0.25
    assert table["bsp"]["speed_vs_bsp"] == 1.0
    text = markdown(list(table.values()), 0.95)
    assert "| none | backup | 175.0 | 2.00 | 0.970 | 2.50 | 0.50 | 0.25 |" in text


@pytest.mark.e2e
def test_a_small_matrix_runs_and_writes_results(tmp_path: Path) -> None:
    overrides = {"train.steps": 60, "train.eval_interval": 0.5, "train.target_accuracy": 0.5}
    table = run_matrix(["none"], ["bsp", "backup"], 1, tmp_path, overrides)
    assert {e["mode"] for e in table} == {"bsp", "backup"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failures"] == {}
    assert (tmp_path / "none__bsp__0" / "summary.json").exists()
    assert "| none | backup |" in (tmp_path / "results.md").read_text()
