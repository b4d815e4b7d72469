"""`weaksync bench`: a scenario × mode matrix, run side by side on the embedded cluster.

Runs are interleaved (every mode of a scenario, then the next scenario, then the next repeat), so slow
drift of the machine spreads over all cells; ratios are taken against `bsp` and against PyTorch DDP of
the same repeat and scenario, then summarised by their median.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config

if TYPE_CHECKING:  # the CLI imports this module for its defaults; torch loads only when a run starts
    from ..runtime.launcher import RunResult

DEFAULT_SCENARIOS = ("none", "slow-worker-x4", "spikes-5pct")
DEFAULT_MODES = ("auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async", "ddp")
# Time to accuracy is quantised by the evaluation interval, and digits reaches 95 % in 1-2 s here, so bench runs
# snapshot every 50 ms unless told otherwise (`--set train.eval_interval=...`). Snapshots are evaluated after
# training, as the DDP baseline does: evaluating live took ~6 % of this 2-core machine from weaksync's training
# and none from DDP's.
BENCH_DEFAULTS: dict[str, Any] = {"train.eval_interval": 0.05, "train.eval_live": False}
KEYS = ("steps_per_s", "time_to_accuracy", "final_accuracy", "train_seconds")


@dataclass(frozen=True)
class Cell:
    scenario: str
    mode: str
    repeat: int

    @property
    def name(self) -> str:
        """The run directory's name; a scenario given as a YAML path is named by its file's stem."""
        label = Path(self.scenario).stem if self.scenario.endswith((".yaml", ".yml")) else self.scenario
        return f"{label}__{self.mode}__{self.repeat}"


def expand_scenarios(names: list[str]) -> list[str]:
    """`all` stands for `none` plus every shipped scenario; duplicates keep their first place."""
    from ..stragglers.scenarios import list_scenarios

    out: list[str] = []
    for name in names:
        for item in ["none", *list_scenarios()] if name == "all" else [name]:
            if item not in out:
                out.append(item)
    return out


def plan(scenarios: list[str], modes: list[str], repeats: int) -> list[Cell]:
    """Every scenario's modes back to back, repeat after repeat; the order of the modes turns by one for each
    scenario and repeat, so that no mode always runs first (the first run of a series can start slower)."""
    cells = []
    for r in range(repeats):
        for i, scenario in enumerate(scenarios):
            turn = (r + i) % len(modes) if modes else 0
            cells += [Cell(scenario, m, r) for m in modes[turn:] + modes[:turn]]
    return cells


def cell_config(cell: Cell, out_dir: Path, overrides: dict[str, Any]) -> Config:
    values = {**BENCH_DEFAULTS, **overrides, "run.out_dir": str(out_dir), "run.name": cell.name}
    if cell.mode != "ddp":
        values["sync.mode"] = cell.mode
    if cell.scenario != "none":
        values["scenario"] = cell.scenario
    return load_config(None, values)


def run_cell(cell: Cell, out_dir: Path, overrides: dict[str, Any]) -> RunResult:
    from ..runtime.launcher import run_local

    cfg = cell_config(cell, out_dir, overrides)
    if cell.mode == "ddp":
        from .ddp import run_ddp

        return run_ddp(cfg)
    return run_local(cfg)


def summarise(rows: dict[Cell, dict[str, Any]], scenarios: list[str], modes: list[str]) -> list[dict[str, Any]]:
    """Per scenario and mode: medians, and median ratios to bsp and to DDP of the same repeat."""
    table = []
    for scenario in scenarios:
        for mode in modes:
            cells = [c for c in rows if c.scenario == scenario and c.mode == mode]
            if not cells:
                continue
            entry: dict[str, Any] = {"scenario": scenario, "mode": mode, "runs": len(cells)}
            for key in KEYS:
                values = [rows[c][key] for c in cells if rows[c].get(key) is not None]
                entry[key] = statistics.median(values) if values else None
            for ref in ("bsp", "ddp"):
                entry[f"speed_vs_{ref}"] = _median_ratio(rows, cells, ref, "steps_per_s")
                entry[f"tta_vs_{ref}"] = _median_ratio(rows, cells, ref, "time_to_accuracy")
            table.append(entry)
    return table


def _median_ratio(rows: dict[Cell, dict], cells: list[Cell], ref: str, key: str) -> float | None:
    ratios = []
    for c in cells:
        base = rows.get(Cell(c.scenario, ref, c.repeat))
        if base is None or rows[c].get(key) is None or not base.get(key):
            continue
        ratios.append(rows[c][key] / base[key])
    return statistics.median(ratios) if ratios else None


def markdown(table: list[dict[str, Any]], target: float) -> str:
    def fmt(value: float | None, pattern: str) -> str:
        return "–" if value is None else pattern.format(value)

    lines = [
        f"| scenario | mode | worker steps/s | time to {target:.0%} (s) | final accuracy "
        "| steps/s ÷ bsp | time to acc. ÷ bsp | time to acc. ÷ DDP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in table:
        lines.append(
            f"| {e['scenario']} | {e['mode']} | {fmt(e['steps_per_s'], '{:.1f}')} "
            f"| {fmt(e['time_to_accuracy'], '{:.2f}')} | {fmt(e['final_accuracy'], '{:.3f}')} "
            f"| {fmt(e['speed_vs_bsp'], '{:.2f}')} | {fmt(e['tta_vs_bsp'], '{:.2f}')} "
            f"| {fmt(e['tta_vs_ddp'], '{:.2f}')} |"
        )
    return "\n".join(lines)


def best_modes(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario, the weaksync mode (DDP excluded) that reached the target soonest; None if none did."""
    best: dict[str, dict[str, Any] | None] = {}
    for e in table:
        best.setdefault(e["scenario"], None)
        if e["mode"] == "ddp" or e.get("time_to_accuracy") is None:
            continue
        current = best[e["scenario"]]
        if current is None or e["time_to_accuracy"] < current["time_to_accuracy"]:
            best[e["scenario"]] = e
    return [{"scenario": s, "best": e} for s, e in best.items()]


def best_markdown(table: list[dict[str, Any]], target: float) -> str:
    """One line per scenario: its best mode against bsp and DDP of the same repeats."""
    lines = [
        f"| scenario | best mode | its time to {target:.0%} (s) | final accuracy | ÷ bsp | ÷ DDP |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in best_modes(table):
        e = row["best"]
        if e is None:
            lines.append(f"| {row['scenario']} | none reached {target:.0%} | – | – | – | – |")
            continue
        ratios = ["–" if e.get(k) is None else f"{e[k]:.2f}" for k in ("tta_vs_bsp", "tta_vs_ddp")]
        lines.append(
            f"| {row['scenario']} | {e['mode']} | {e['time_to_accuracy']:.2f} | {e['final_accuracy']:.3f} "
            f"| {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


def run_matrix(
    scenarios: list[str],
    modes: list[str],
    repeats: int,
    out_dir: Path,
    overrides: dict[str, Any] | None = None,
    on_cell: Callable[[Cell, dict[str, Any] | None, str | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell (a failed cell is recorded, not fatal), write results.json and results.md."""
    from ..runtime.launcher import RunInterrupted

    overrides = overrides or {}
    for cell in plan(scenarios, modes, 1):  # validate every cell's config before the first run
        cell_config(cell, out_dir / "_check", overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[Cell, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for cell in plan(scenarios, modes, repeats):
        try:
            summary = run_cell(cell, out_dir, overrides).summary
        except RunInterrupted:
            raise  # Ctrl-C stops the whole matrix, not only the run in progress
        except Exception as exc:  # one broken cell must not lose the others' results
            failures[cell.name] = f"{type(exc).__name__}: {exc}"
            if on_cell:
                on_cell(cell, None, failures[cell.name])
            continue
        rows[cell] = summary
        if on_cell:
            on_cell(cell, summary, None)
    table = summarise(rows, scenarios, modes)
    target = next(iter(rows.values()))["target_accuracy"] if rows else 0.95
    (out_dir / "results.json").write_text(json.dumps({"table": table, "failures": failures}, indent=1))
    text = markdown(table, target) + "\n\nBest weaksync mode per scenario:\n\n" + best_markdown(table, target)
    if failures:
        text += "\n\nFailed runs:\n" + "\n".join(f"- {k}: {v}" for k, v in failures.items())
    (out_dir / "results.md").write_text(text + "\n")
    if rows:
        from ..report.plots import bench_ratio_plot

        bench_ratio_plot(table, out_dir / "results.png", target, "ddp" if "ddp" in modes else "bsp")
    return table
