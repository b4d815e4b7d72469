"""Terminal output: a live per-worker table during a run, and the summary at its end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import Config
from ..report.slow import lags


class LiveProgress:
    """Steps, steps/s and compute time per worker, plus the latest accuracy; refreshed once a second."""

    def __init__(self, console: Console, config: Config):
        self.console = console
        self.config = config
        self.previous: dict[int, tuple[float, int]] = {}
        self.rates: dict[int, float] = {}
        self.live = Live(Text("starting processes..."), console=console, refresh_per_second=4, transient=False)
        self.started = time.monotonic()

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def update(self, progress: dict[str, Any]) -> None:
        table = Table(box=None, header_style="bold")
        for col in ("worker", "step", "steps/s", "compute ms", "b", "stale blocks/step", "accepted", ""):
            table.add_column(col, justify="right")
        budget = self.config.train.steps * self.config.cluster.workers
        workers = progress.get("workers", {})
        computes = {w: p["compute"] for w, p in workers.items() if p.get("compute")}
        accepted: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for server in progress.get("servers", {}).values():  # JSON keys: worker ids as strings
            for key, count in server.get("accepted_by_worker", {}).items():
                accepted[key] = accepted.get(key, 0) + count
            for key, count in server.get("dropped_by_worker", {}).items():
                dropped[key] = dropped.get(key, 0) + count
        for w, p in sorted(workers.items()):
            total = accepted.get(str(w), 0) + dropped.get(str(w), 0)
            share = f"{accepted.get(str(w), 0) / total:.0%}" if total else "-"
            prev = self.previous.get(w)
            if prev and p["t"] > prev[0]:
                self.rates[w] = (p["step"] - prev[1]) / (p["t"] - prev[0])
            self.previous[w] = (p["t"], p["step"])
            compute = f"{p['compute'] * 1000:.1f}" if p.get("compute") else "-"
            rate = f"{self.rates[w]:.1f}" if w in self.rates else "-"
            ratio = lags(computes, w) if w in computes else None
            flag = Text(f"straggler ×{ratio:.1f}", style="bold red") if ratio else ""
            b = str(p.get("b", "-"))
            table.add_row(str(w), f"{p['step']}", rate, compute, b, f"{p.get('stale_blocks', 0):.2f}", share, flag)
        servers = progress.get("servers", {}).values()
        drops: dict[str, int] = {}
        for s in servers:
            for reason, count in s["drops"].items():
                drops[reason] = drops.get(reason, 0) + count
        updates = sum(s["updates"] for s in servers)
        ks = "/".join(str(s.get("k", "-")) for s in servers)
        metric = self.config.train.metric  # a script may measure another: then its first figure shows
        figures = {k: v for k, v in progress.get("eval", {}).items() if k != "t"}
        name, value = (metric, figures[metric]) if metric in figures else next(iter(figures.items()), (metric, None))
        head = Text(
            f"{self.config.sync.mode}  N={self.config.cluster.workers} S={self.config.cluster.servers}  k={ks}  "
            f"elapsed {time.monotonic() - self.started:.0f}s  "
            f"steps {sum(p['step'] for p in workers.values())}/{budget}  "
            f"test {name} {'-' if value is None else f'{value:.3f}'}  block updates {updates}  "
            f"dropped {sum(drops.values())} {drops if drops else ''}"
        )
        self.live.update(Group(head, table))


def _metric_rows(s: dict[str, Any], fmt: Any) -> list[tuple[str, str]]:
    """Final/best and time-to-target of the run's metric: accuracy as a percentage, any other as a number."""
    m = s.get("metric") or {"name": "accuracy", "target": s["target_accuracy"]}
    if m["name"] == "accuracy":
        return [
            ("final / best accuracy", f"{fmt(s['final_accuracy'])} / {fmt(s['best_accuracy'])}"),
            (f"time to {s['target_accuracy']:.0%}", fmt(s["time_to_accuracy"], "{:.2f} s")),
        ]
    sign = ">=" if m["goal"] == "max" else "<="
    target = "-" if m["target"] is None else f"{m['target']:g}"
    return [
        (f"final / best {m['name']}", f"{fmt(m['final'], '{:.4g}')} / {fmt(m['best'], '{:.4g}')}"),
        (f"time to {m['name']} {sign} {target}", fmt(m["time_to_target"], "{:.2f} s")),
    ]


def print_summary(console: Console, run_dir: Path, s: dict[str, Any]) -> None:
    def fmt(value: Any, pattern: str = "{:.3f}") -> str:
        return "-" if value is None else pattern.format(value)

    contrib, blocks, grads = s["contributions"], s["blocks_per_step"], s.get("gradients", {})
    table = Table(title=f"run {run_dir}", show_header=False, box=None)
    rows = [
        (
            "mode",
            f"{s.get('mode')}  k={s.get('k')} b={s.get('b')} tau={s.get('tau')}  "
            f"N={s.get('num_workers')} S={s.get('num_servers')} B={s.get('num_blocks')}",
        ),
        *_metric_rows(s, fmt),
        ("training time", fmt(s["train_seconds"], "{:.2f} s")),
        ("worker steps/s", fmt(s["steps_per_s"], "{:.1f}")),
        ("step time p50/p95/p99", " / ".join(fmt(s["step_time"][q], "{:.4f}") for q in ("p50", "p95", "p99")) + " s"),
        (
            "contributions accepted / dropped",
            f"{contrib['accepted']} / {contrib['dropped']} {contrib['drops_by_reason'] or ''}",
        ),
        (
            "gradients that reached an update",
            fmt(grads.get("used_share"), "{:.1%}")
            + f" of {grads.get('computed', '-')} ({grads.get('folded', 0)} added to a round their worker was in)",
        ),
        (
            "blocks per step fresh / stale",
            f"{fmt(blocks['fresh_mean'], '{:.2f}')} / {fmt(blocks['stale_mean'], '{:.2f}')}",
        ),
        (
            "bytes / messages per step",
            f"{fmt(s['traffic']['bytes_per_step'], '{:,.0f}')} / {fmt(s['traffic']['msgs_per_step'], '{:.1f}')}",
        ),
    ]
    quorums = s.get("quorums", {})
    if quorums.get("changes") or s.get("mode") == "auto":
        ends = f"k per server {quorums.get('k')}, b per worker {quorums.get('b')} at the end"
        rows.append(("auto", f"{len(quorums.get('changes', []))} changes; {ends}"))
        cut = s.get("updates_by_deadline", 0)
        rows.append(
            ("  rounds cut short", f"{cut} of {s.get('updates', '-')} block updates (the cut, or a push deadline)")
        )
        for change in quorums.get("changes", [])[:8]:
            rows.append((f"  {change['t']:.2f} s {change['who']}", change["reason"]))
    recovery = s.get("recovery") or {}
    if recovery.get("restarts"):
        rows.append(
            (
                "restarts",
                f"{recovery['servers']} servers, {recovery['workers']} workers; back at work after "
                f"p50 {fmt(recovery['back_after_p50'], '{:.2f}')} / max {fmt(recovery['back_after_max'], '{:.2f}')} s; "
                f"{recovery['versions_lost']} block versions lost",
            )
        )
    for found in s.get("stragglers", []):
        what = f"{found['role']} {found['id']}: {found['metric']} ×{found['ratio']} of its peers"
        if found.get("persistent"):
            what += ", persistent"
        rows.append(("straggler", what))
    for key, value in rows:
        table.add_row(Text(key, style="bold"), Text(value))
    console.print(table)
    console.print(f"summary: {run_dir / 'summary.json'}")
