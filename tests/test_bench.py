"""The bench matrix: ratios against bsp and DDP of the same repeat, and a real (tiny) matrix run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weaksync.bench.matrix import (
    BENCH_DEFAULTS,
    Cell,
    best_markdown,
    cell_config,
    expand_scenarios,
    markdown,
    plan,
    run_matrix,
    summarise,
)


def test_plan_interleaves_modes_within_each_repeat_and_turns_their_order() -> None:
    cells = plan(["none", "spikes"], ["bsp", "backup"], 2)
    assert [c.name for c in cells[:4]] == ["none__bsp__0", "none__backup__0", "spikes__backup__0", "spikes__bsp__0"]
    assert [c.name for c in cells[4:6]] == ["none__backup__1", "none__bsp__1"]
    every = {Cell(s, m, r) for s in ("none", "spikes") for m in ("bsp", "backup") for r in (0, 1)}
    assert len(cells) == 8 and set(cells) == every


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
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_expands_to_none_and_every_shipped_scenario_once() -> None:
    from weaksync.stragglers.scenarios import list_scenarios

    assert expand_scenarios(["spikes", "all"]) == ["spikes", "none", *[s for s in list_scenarios() if s != "spikes"]]
    assert expand_scenarios(["none", "none"]) == ["none"]


def test_bench_runs_evaluate_finely_unless_told_otherwise(tmp_path: Path) -> None:
    cell = Cell("none", "bsp", 0)
    assert cell_config(cell, tmp_path, {}).train.eval_interval == BENCH_DEFAULTS["train.eval_interval"]
    assert cell_config(cell, tmp_path, {"train.eval_interval": 2.0}).train.eval_interval == 2.0


def test_a_scenario_file_names_its_cells_by_stem() -> None:
    assert Cell("/tmp/x/slow-x8.yaml", "bsp", 1).name == "slow-x8__bsp__1"


def test_ratio_plot_draws_one_bar_per_mode_and_skips_unreached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import matplotlib.pyplot as plt

    from weaksync.report import plots

    ratios = {("none", "bsp"): 0.8, ("none", "ddp"): 1.0, ("spikes", "bsp"): None, ("spikes", "ddp"): 1.0}
    table = [{"scenario": s, "mode": m, "tta_vs_ddp": r} for (s, m), r in ratios.items()]
    seen = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.setdefault("ax", fig.axes[0]) and save(fig, path))
    plots.bench_ratio_plot(table, tmp_path / "r.png", 0.95)
    ax = seen["ax"]
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == 0.8 and len(heights) == 2 and heights[1] != heights[1]  # NaN: spikes/bsp not reached
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "spikes"]
    assert "time to accuracy" in ax.get_ylabel() and (tmp_path / "r.png").exists()
    plt.close("all")


def test_best_mode_is_the_fastest_weaksync_mode_and_never_ddp() -> None:
    def e(scenario: str, mode: str, tta: float | None) -> dict:
        ratios = (
            {"tta_vs_bsp": None, "tta_vs_ddp": None} if tta is None else {"tta_vs_bsp": tta / 4, "tta_vs_ddp": tta / 8}
        )
        return {"scenario": scenario, "mode": mode, "time_to_accuracy": tta, "final_accuracy": 0.97, **ratios}

    table = [e("x", "bsp", 4.0), e("x", "async", 1.0), e("x", "ddp", 0.5), e("y", "bsp", None), e("y", "ddp", 2.0)]
    text = best_markdown(table, 0.95)
    assert "| x | async | 1.00 | 0.970 | 0.25 | 0.12 |" in text
    assert "| y | none reached 95% | – | – | – | – |" in text


def test_bench_runs_evaluate_after_training_like_the_ddp_baseline(tmp_path: Path) -> None:
    cell = Cell("none", "async", 0)
    assert cell_config(cell, tmp_path, {}).train.eval_live is False
    assert cell_config(cell, tmp_path, {"train.eval_live": True}).train.eval_live is True


def test_ctrl_c_stops_the_whole_matrix_not_only_one_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed cell is recorded and the matrix goes on; an interrupted one (Ctrl-C, SIGTERM) ends the bench."""
    from weaksync.bench import matrix
    from weaksync.runtime.launcher import RunFailed, RunInterrupted

    ran: list[str] = []

    def fake_run(cell: Cell, out_dir: Path, overrides: dict) -> None:
        ran.append(cell.name)
        raise (RunInterrupted if cell.mode == "backup" else RunFailed)(f"{cell.name} stopped")

    monkeypatch.setattr(matrix, "run_cell", fake_run)
    with pytest.raises(RunInterrupted):
        run_matrix(["none"], ["bsp", "backup", "async"], 2, tmp_path, {})
    assert ran == ["none__bsp__0", "none__backup__0"]  # bsp's failure was survived, backup's interrupt was not
