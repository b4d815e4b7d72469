"""Report builder: tables, PNG figures, report.md and a self-contained report.html from hand-made run dirs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from weaksync.config import ConfigError
from weaksync.report.build import build_report
from weaksync.report.tables import comparison_table, time_to_target, to_markdown, worker_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0


def _step_events(w: int, steps: int, compute: float, injected: float) -> list[dict]:
    out, t = [], T0
    for i in range(steps):
        wait = 0.002
        t += wait
        t_end = t + compute + injected
        t_push = t_end + 0.001
        out.append({"ev": "step", "w": w, "step": i, "t": t, "t_end": t_end, "t_push": t_push, "injected": injected,
                    "wait": wait, "fresh": 2, "stale": [1] if i % 3 else [], "versions": [i, i]})  # fmt: skip
        t = t_push
    return out


def _summary(name: str, mode: str, steps_per_s: float, straggler: int | None) -> dict:
    workers = {
        str(w): {
            "steps": 20,
            "steps_per_s": 12.5 if w == straggler else 40.0,
            "step_time": {"p50": 0.0801 if w == straggler else 0.0252, "p95": 0.09, "p99": 0.1},
            "compute_time": {"p50": 0.078 if w == straggler else 0.022, "p95": 0.08, "p99": 0.08},
            "wait_time": {"p50": 0.002, "p95": 0.002, "p99": 0.002},
            "accepted_share": 0.25 if w == straggler else 1.0,
        }
        for w in range(3)
    }
    slow = {"role": "worker", "id": straggler, "metric": "compute p50", "ratio": 3.55}
    stragglers = [] if straggler is None else [{**slow, "slow_share": 1.0, "persistent": True}]
    return {
        "run": name, "mode": mode, "num_workers": 3, "num_servers": 1, "k": 2, "b": 2, "tau": 1,
        "steps_per_s": steps_per_s, "step_time": {"p50": 0.0251, "p95": 0.0779, "p99": 0.0801},
        "target_accuracy": 0.9, "time_to_accuracy": 1.25, "final_accuracy": 0.937,
        "accuracy_curve": [[0.1, 0.1], [0.6, 0.7], [1.25, 0.91], [1.8, 0.937]],
        "contributions": {"accepted": 1234, "dropped": 56, "drops_by_reason": {"stale": 56}},
        "staleness": {"0": 900, "1": 300, "3": 34},
        "blocks_per_step": {"fresh_mean": 1.5, "stale_mean": 0.5},
        "traffic": {"bytes_per_step": 2048.0, "msgs_per_step": 6.5},
        "workers": workers, "stragglers": stragglers,
        "peak_rss_bytes": {"server-0": 100 << 20, "worker-0": 300 << 20, "worker-1": 200 << 20},
        "worker_status": {"0": "done", "1": "done", "2": "done"},
    }  # fmt: skip


def _make_run(root: Path, name: str, mode: str, straggler: int | None) -> Path:
    run = root / name
    (run / "events").mkdir(parents=True)
    summary = _summary(name, mode, 77.7 if straggler is None else 33.3, straggler)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "meta.json").write_text(json.dumps({k: summary[k] for k in ("mode", "k", "b", "tau", "num_workers")}))
    for w in range(3):
        slow = w == straggler
        events = [{"ev": "start", "w": w, "pid": 1, "t": T0}]
        events += _step_events(w, 20, 0.022, 0.056 if slow else 0.0)
        lines = [json.dumps(e) for e in events]
        (run / "events" / f"worker-{w}.jsonl").write_text("\n".join(lines) + '\n{"ev": "st')  # torn last line
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    runs = [_make_run(root, "fast-async", "async", None), _make_run(root, "slow-bsp", "bsp", 2)]
    return build_report(runs, root / "out")


def test_files_and_pngs(report: Path) -> None:
    out = report.parent
    assert report == out / "report.html" and report.exists() and (out / "report.md").exists()
    pngs = sorted((out / "img").glob("*.png"))
    assert len(pngs) == 6  # accuracy, staleness, step time, quorums (k, b), one timeline per run
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert b"http" not in data


def test_html_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # every resource is a data URI
    assert text.count('src="data:image/png;base64,') == 6
    assert "fast-async" in text and "slow-bsp" in text
    assert "worker 2: compute p50 ×3.55" in text


def test_markdown_tables_hold_the_numbers(report: Path) -> None:
    md = (report.parent / "report.md").read_text()
    for needle in ("| fast-async | async | 2 / 2 / 1 | 77.7 |", "| slow-bsp | bsp |", "25.1", "77.9", "80.1",
                   "1.25", "0.937", "1234 / 56", "1.50 / 0.50", "2.00 KiB", "6.5", "300.00 MiB",
                   "| 2 (straggler) | 20 | 12.5 | 80.1 |", "78.0", "25.0%",
                   "- worker 2: compute p50 ×3.55 of its peers, slow in 100.0% of the run (persistent)",
                   "- none found"):  # fmt: skip
        assert needle in md, needle
    assert len(re.findall(r"!\[[^\]]*\]\(img/[^)]+\.png\)", md)) == 6
    assert "## Quorums k and b over the run" in md
    for link in re.findall(r"\]\((img/[^)]+)\)", md):
        assert (report.parent / link).exists()


def test_target_override_recomputes_time_to_accuracy() -> None:
    s = _summary("x", "bsp", 1.0, None)
    assert time_to_target(s, None) == 1.25
    assert time_to_target(s, 0.5) == 0.6
    assert time_to_target(s, 0.99) is None
    headers, rows = comparison_table(["x"], [s], target=0.99)
    assert "time to 99% (s)" in headers and "not reached" in rows[0]


def test_worker_table_marks_straggler_and_escapes_pipes() -> None:
    headers, rows = worker_table(_summary("x", "bsp", 1.0, 1))
    assert rows[1][0] == "1 (straggler)" and rows[0][0] == "0"
    assert "a\\|b" in to_markdown((["run"], [["a|b"]]))


def test_same_names_and_bad_dirs(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "p1", "same", "async", None)
    b = _make_run(tmp_path / "p2", "same", "bsp", 1)
    md = (build_report([a, b], tmp_path / "out").parent / "report.md").read_text()
    assert "| p1/same |" in md and "| p2/same |" in md
    with pytest.raises(ConfigError, match="not a run directory"):
        build_report([tmp_path / "nope"], tmp_path / "out2")
    with pytest.raises(ConfigError):
        build_report([], tmp_path / "out3")
