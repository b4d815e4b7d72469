"""Report figures as PNG files (matplotlib, Agg backend): accuracy over time, per-worker timelines,
staleness histograms and per-worker step-time distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

DPI = 110
COLORS = {"wait": "#bdbdbd", "compute": "#1f77b4", "injected": "#ff7f0e", "push": "#2ca02c"}
STRAGGLER = "#d62728"
Steps = dict[int, list[dict[str, Any]]]  # worker id -> its step events, by step


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no URL baked into the file
    plt.close(fig)
    return path


def _no_data(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes, color="grey")


def accuracy_plot(runs: list[tuple[str, dict[str, Any]]], path: Path, target: float | None = None) -> Path:
    """Test accuracy against wall-clock seconds since the run's first step, every run on one axis."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plotted = False
    for name, s in runs:
        curve = [(t, a) for t, a in s.get("accuracy_curve") or [] if t is not None and a is not None]
        if curve:
            t, a = zip(*curve)
            ax.plot(t, np.asarray(a) * 100, marker="o", markersize=3, label=f"{name} ({s.get('mode', '?')})")
            plotted = True
    targets = {target} if target is not None else {s.get("target_accuracy") for _, s in runs} - {None}
    for tgt in targets:
        ax.axhline(tgt * 100, color="grey", linestyle="--", linewidth=1, label=f"target {tgt * 100:g}%")
    if not plotted:
        _no_data(ax, "evaluations")
    ax.set(title="Test accuracy vs wall-clock time", xlabel="wall-clock time since first step (s)",
           ylabel="test accuracy (%)")  # fmt: skip
    ax.grid(alpha=0.3)
    if plotted or targets:
        ax.legend(loc="lower right")
    return _save(fig, path)


def timeline_window(steps: Steps, max_seconds: float = 3.0, min_steps: int = 40) -> tuple[float, float]:
    """[start, end) in epoch seconds: from the first step until the fastest worker has done `min_steps`
    steps, at most `max_seconds` — short enough to read each bar, long enough to see who lags."""
    starts = [evs[0]["t"] - evs[0].get("wait", 0.0) for evs in steps.values() if evs]
    if not starts:
        return 0.0, 0.0
    t0 = min(starts)
    nth = [evs[min(min_steps, len(evs)) - 1]["t_push"] for evs in steps.values() if evs]
    return t0, min(t0 + max_seconds, min(nth))


def timeline_plot(name: str, steps: Steps, summary: dict[str, Any], path: Path, max_seconds: float = 3.0) -> Path:
    """One row per worker over a short window: pull-wait, compute, injected delay and push of each step."""
    workers = sorted(steps)
    fig, ax = plt.subplots(figsize=(11, 0.6 * max(len(workers), 2) + 1.6))
    t0, t1 = timeline_window(steps, max_seconds)
    slow = {int(s["id"]): s for s in summary.get("stragglers") or [] if s.get("role") == "worker"}
    for row, w in enumerate(workers):
        bars: dict[str, list[tuple[float, float]]] = {k: [] for k in COLORS}
        for e in steps[w]:
            if e["t"] - e.get("wait", 0.0) >= t1 or e["t_push"] <= t0:
                continue
            injected = e.get("injected") or 0.0
            segments = {
                "wait": (e["t"] - e.get("wait", 0.0), e["t"]),
                "compute": (e["t"], e["t_end"] - injected),
                "injected": (e["t_end"] - injected, e["t_end"]),
                "push": (e["t_end"], e["t_push"]),
            }
            for kind, (a, b) in segments.items():
                if b > a:
                    bars[kind].append((a - t0, b - a))
        for kind, spans in bars.items():
            ax.broken_barh(spans, (row - 0.35, 0.7), facecolors=COLORS[kind], edgecolor="none")
    labels = [f"worker {w}" + (f"\nstraggler ×{slow[w]['ratio']}" if w in slow else "") for w in workers]
    ax.set_yticks(range(len(workers)), labels)
    for tick, w in zip(ax.get_yticklabels(), workers):
        if w in slow:
            tick.set_color(STRAGGLER)
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(0, max(t1 - t0, 1e-3))
    if not workers:
        _no_data(ax, "steps")
    n = max((sum(1 for e in evs if e["t"] < t1) for evs in steps.values()), default=0)
    ax.set(title=f"{name}: per-worker timeline, first {t1 - t0:.2f} s (up to {n} steps per worker)",
           xlabel="time since first step (s)")  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    names = {"wait": "pull wait", "compute": "compute", "injected": "injected delay", "push": "push"}
    ax.legend(handles=[Patch(color=COLORS[k], label=v) for k, v in names.items()], loc="upper center",
              bbox_to_anchor=(0.5, -0.18 if len(workers) <= 4 else -0.1), ncol=4, frameon=False)  # fmt: skip
    return _save(fig, path)


def staleness_plot(runs: list[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """Share of accepted contributions by staleness (server versions behind), runs side by side."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    hists = [(name, {int(k): v for k, v in (s.get("staleness") or {}).items()}) for name, s in runs]
    values = sorted({k for _, h in hists for k in h})
    width = 0.8 / max(len(hists), 1)
    for i, (name, h) in enumerate(hists):
        total = sum(h.values())
        if not total:
            continue
        x = np.arange(len(values)) + (i - (len(hists) - 1) / 2) * width
        shares = [100 * h.get(v, 0) / total for v in values]
        bars = ax.bar(x, shares, width, label=f"{name} ({total} contributions)")
        ax.bar_label(bars, fmt="%.0f%%", fontsize=8)
    if not values:
        _no_data(ax, "contributions")
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set(title="Staleness of accepted contributions", xlabel="staleness (server versions behind)",
           ylabel="share of accepted contributions (%)")  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    if values:
        ax.legend()
    return _save(fig, path)


def step_time_plot(runs: list[tuple[str, dict[str, Any], Steps]], path: Path) -> Path:
    """Box plots per worker, one panel per run: step time (start to next start) next to compute time (incl.
    injected delay), since under BSP every worker's step time is the straggler's; stragglers in red."""
    cols = min(len(runs), 3) or 1
    rows = (len(runs) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    kinds = (("step time", COLORS["wait"], -0.2), ("compute time", COLORS["compute"], 0.2))
    for ax, (name, summary, steps) in zip(axes.flat, runs):
        workers = sorted(steps)
        ax.set_title(f"{name} ({summary.get('mode', '?')})")
        series = {
            "step time": [np.diff([e["t"] for e in steps[w]]) * 1000 for w in workers],
            "compute time": [np.asarray([e["t_end"] - e["t"] for e in steps[w]]) * 1000 for w in workers],
        }
        if not any(len(d) for d in series["compute time"]):
            _no_data(ax, "steps")
            continue
        slow = {int(s["id"]) for s in summary.get("stragglers") or [] if s.get("role") == "worker"}
        for label, color, offset in kinds:
            box = ax.boxplot(
                [d if len(d) else [np.nan] for d in series[label]],
                positions=np.arange(len(workers)) + offset,
                widths=0.35,
                patch_artist=True,
                flierprops={"markersize": 2, "alpha": 0.5},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.8)
        ax.set_xticks(range(len(workers)), [f"w{w}" + ("*" if w in slow else "") for w in workers])
        for tick, w in zip(ax.get_xticklabels(), workers):
            if w in slow:
                tick.set_color(STRAGGLER)
                tick.set_fontweight("bold")
        ax.set(xlabel="worker (* = straggler)", ylabel="time (ms)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(handles=[Patch(color=c, alpha=0.8, label=k) for k, c, _ in kinds], loc="upper right", fontsize=8)
    fig.suptitle("Per-worker step time and compute time")
    return _save(fig, path)


def bench_ratio_plot(table: list[dict[str, Any]], path: Path, target: float, reference: str = "ddp") -> Path:
    """`weaksync bench`: time to the target accuracy ÷ the reference's, one group of bars per scenario.

    A missing bar means the mode (or its reference) did not reach the target in that scenario."""
    scenarios = list(dict.fromkeys(e["scenario"] for e in table))
    modes = [m for m in dict.fromkeys(e["mode"] for e in table) if m != reference]
    key = f"tta_vs_{reference}"
    values = {(e["scenario"], e["mode"]): e.get(key) for e in table}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(scenarios) + 3), 4.5))
    width = 0.8 / max(len(modes), 1)
    x = np.arange(len(scenarios))
    plotted = False
    for i, mode in enumerate(modes):
        heights = [values.get((s, mode)) for s in scenarios]
        bars = [np.nan if h is None else h for h in heights]
        plotted = plotted or any(h is not None for h in heights)
        ax.bar(x - 0.4 + width * (i + 0.5), bars, width, label=mode)
    ref_name = "DDP" if reference == "ddp" else reference
    ax.axhline(1.0, color="black", linewidth=1, label=f"{ref_name} = 1")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="half of it")
    if not plotted:
        _no_data(ax, "time-to-accuracy ratios")
    ax.set_xticks(x, scenarios, rotation=20, ha="right")
    ax.set(title=f"Time to {target:.0%} test accuracy relative to {ref_name} (lower is better)",
           ylabel=f"time to accuracy ÷ {ref_name} (ratio)", xlabel="scenario")  # fmt: skip
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def quorum_plot(runs: list[tuple[str, dict[str, Any], Steps]], path: Path) -> Path:
    """k (per server), b (mean over workers) and step time over the run, one panel per run: what `auto` chose
    and what it bought. Static modes show flat quorums."""
    cols = min(len(runs), 3) or 1
    rows = (len(runs) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    for ax, (name, summary, steps) in zip(axes.flat, runs):
        ax.set_title(f"{name} ({summary.get('mode', '?')})")
        events = sorted((e for evs in steps.values() for e in evs), key=lambda e: e["t"])
        if not events:
            _no_data(ax, "steps")
            continue
        start, end = events[0]["t"], max(e["t_push"] for e in events) - events[0]["t"]
        changes = summary.get("quorums", {}).get("changes", [])
        servers = sorted(summary.get("quorums", {}).get("k", {}) or {"0": summary.get("k")})
        for i, s in enumerate(servers):
            times, values = [0.0], [summary.get("k")]
            for c in changes:
                if c["who"] == f"server-{s}" and c["t"] is not None:
                    times.append(c["t"])
                    values.append(c["value"])
            times.append(end)
            values.append(values[-1])
            style = ("-", "--", ":", "-.")[i % 4]
            ax.step(times, values, where="post", label=f"k (server {s})", linewidth=1.5, linestyle=style)
        b_times = [e["t"] - start for e in events]
        b_values = [e.get("b", summary.get("b")) for e in events]
        ax.plot(b_times, b_values, ".", markersize=2, alpha=0.4, color="black", label="b (each step)")
        ax.set(xlabel="time since the first step (s)", ylabel="quorum")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        for _, evs in sorted(steps.items()):
            t = np.array([e["t"] for e in evs])
            if len(t) > 1:
                twin.plot(t[1:] - start, np.diff(t) * 1000, linewidth=0.6, alpha=0.5, color=COLORS["wait"])
        twin.set_ylabel("step time (ms), per worker")
        twin.set_yscale("log")
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle("Quorums k and b, and step time, over the run")
    return _save(fig, path)
