"""`build_report`: compare run directories in report.md and one self-contained report.html (with PNGs)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..records.eventlog import read_events
from . import html, plots
from .tables import comparison_table, straggler_lines, to_markdown, worker_table


@dataclass
class Run:
    name: str
    path: Path
    summary: dict[str, Any]
    steps: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # worker -> step events, by step


def load_run(run_dir: Path, target: float | None = None) -> Run:
    """A run directory's summary and worker step events; summary.json is rebuilt from the events when absent."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    elif (run_dir / "events").is_dir():
        from .summary import build_summary

        summary = build_summary(run_dir, 0.95 if target is None else target)
    else:
        raise ConfigError(f"'{run_dir}' is not a run directory (no summary.json or events/ inside)")
    steps: dict[int, list[dict[str, Any]]] = {}
    for path in sorted((run_dir / "events").glob("worker-*.jsonl")):
        for e in read_events(path):
            if e.get("ev") == "step":
                steps.setdefault(int(e["w"]), []).append(e)
    for evs in steps.values():
        evs.sort(key=lambda e: e["step"])
    return Run(str(summary.get("run") or run_dir.name), run_dir, summary, steps)


def _unique_names(runs: list[Run]) -> None:
    """Runs with the same name (same folder name under different parents) get their parent as a prefix."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    names = [r.name for r in runs]
    for i, r in enumerate(runs):  # still equal (the same directory twice): number them
        if names.count(names[i]) > 1:
            r.name = f"{names[i]} #{names[:i].count(names[i]) + 1}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def choice_lines(runs: list[Run], limit: int = 12) -> list[str]:
    """auto's changes of k and b per run, with the reason measured at the time (summary.json `quorums`)."""
    lines = []
    for r in runs:
        changes = r.summary.get("quorums", {}).get("changes", [])
        for c in changes[:limit]:
            lines.append(f"{r.name}: {c['t']:.2f} s, {c['who']}: {c['reason']}")
        if len(changes) > limit:
            lines.append(f"{r.name}: {len(changes) - limit} more changes in summary.json")
    return lines


def build_report(run_dirs: list[Path], out_dir: Path, target: float | None = None) -> Path:
    """Write report.md, report.html and the PNGs under `out_dir`; return the HTML path.

    `target` (a test accuracy in [0, 1]) overrides each run's own target for time-to-accuracy."""
    if not run_dirs:
        raise ConfigError("report: pass at least one run directory")
    runs = [load_run(Path(d), target) for d in run_dirs]
    _unique_names(runs)
    out_dir = Path(out_dir)
    img_dir = out_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(r.name, r.summary) for r in runs]

    figures = {
        "accuracy": plots.accuracy_plot(pairs, img_dir / "accuracy.png", target),
        "staleness": plots.staleness_plot(pairs, img_dir / "staleness.png"),
        "step_time": plots.step_time_plot([(r.name, r.summary, r.steps) for r in runs], img_dir / "step_time.png"),
        "quorums": plots.quorum_plot([(r.name, r.summary, r.steps) for r in runs], img_dir / "quorums.png"),
    }
    timelines = {}
    for i, r in enumerate(runs):
        timelines[r.name] = plots.timeline_plot(
            r.name, r.steps, r.summary, img_dir / f"timeline-{i}-{_slug(r.name)}.png"
        )

    comparison = comparison_table([r.name for r in runs], [r.summary for r in runs], target)
    title = "weaksync report: " + ", ".join(r.name for r in runs)
    rel = lambda p: p.relative_to(out_dir).as_posix()  # noqa: E731

    md = [f"# {title}", "", "## Comparison", "", to_markdown(comparison), ""]
    md += ["## Test accuracy over time", "", f"![test accuracy vs time]({rel(figures['accuracy'])})", ""]
    md += ["## Staleness", "", f"![staleness histogram]({rel(figures['staleness'])})", ""]
    md += ["## Step time per worker", "", f"![step time per worker]({rel(figures['step_time'])})", ""]
    md += ["## Quorums k and b over the run", "", f"![k, b and step time]({rel(figures['quorums'])})", ""]
    md += [f"- {line}" for line in choice_lines(runs)]
    body = [f"<h1>{escape(title)}</h1>", "<h2>Comparison</h2>", html.table_html(comparison)]
    body += ["<h2>Test accuracy over time</h2>", html.image_html(figures["accuracy"], "test accuracy vs time")]
    body += ["<h2>Staleness</h2>", html.image_html(figures["staleness"], "staleness histogram")]
    body += ["<h2>Step time per worker</h2>", html.image_html(figures["step_time"], "step time per worker")]
    body += ["<h2>Quorums k and b over the run</h2>", html.image_html(figures["quorums"], "k, b and step time")]
    body += [f"<ul>{''.join(f'<li>{escape(line)}</li>' for line in choice_lines(runs))}</ul>"]

    for r in runs:
        s = r.summary
        heading = f"Run {r.name}: {s.get('mode', '?')}, N={s.get('num_workers', '?')} S={s.get('num_servers', '?')}"
        workers = worker_table(s)
        stragglers = straggler_lines(s)
        md += [f"## {heading}", "", f"Directory: `{r.path}`", "", to_markdown(workers), "", "Stragglers:", ""]
        md += [f"- {line}" for line in stragglers] or ["- none found"]
        md += ["", f"![timeline of {r.name}]({rel(timelines[r.name])})", ""]
        body += [f"<h2>{escape(heading)}</h2>", f'<p class="muted">Directory: <code>{escape(str(r.path))}</code></p>']
        body += [html.table_html(workers), "<p><b>Stragglers:</b></p>"]
        items = "".join(f'<li class="straggler">{escape(line)}</li>' for line in stragglers)
        body += [f"<ul>{items}</ul>" if stragglers else '<p class="muted">none found</p>']
        body += [html.image_html(timelines[r.name], f"timeline of {r.name}")]

    (out_dir / "report.md").write_text("\n".join(md))
    html_path = out_dir / "report.html"
    html_path.write_text(html.page(title, body), encoding="utf-8")
    return html_path
