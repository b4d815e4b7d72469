"""Report tables: the cross-run comparison and each run's per-worker figures, as (headers, rows) of text
cells, rendered to Markdown here and to HTML by `html.py`."""

from __future__ import annotations

from typing import Any

Table = tuple[list[str], list[list[str]]]


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A float with `digits` significant decimals; '-' for missing."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def fmt_pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def time_to_target(summary: dict[str, Any], target: float | None) -> float | None:
    """Seconds from the first step to the first evaluation at or above `target` (the run's own target when
    None, as recorded in summary.json)."""
    if target is None:
        return summary.get("time_to_accuracy")
    for t, acc in summary.get("accuracy_curve") or []:
        if t is not None and acc is not None and acc >= target:
            return t
    return None


def _target_label(summaries: list[dict[str, Any]], target: float | None) -> str:
    targets = {s.get("target_accuracy") for s in summaries} if target is None else {target}
    if len(targets) == 1 and None not in targets:
        return f"time to {next(iter(targets)) * 100:g}% (s)"
    return "time to target (s)"


def comparison_table(names: list[str], summaries: list[dict[str, Any]], target: float | None = None) -> Table:
    headers = [
        "run",
        "mode",
        "k / b / τ",
        "steps/s",
        "step p50 (ms)",
        "step p95 (ms)",
        "step p99 (ms)",
        _target_label(summaries, target),
        "final acc",
        "accepted / dropped",
        "fresh / stale blocks per step",
        "bytes per step",
        "msgs per step",
        "peak RSS (max)",
    ]
    rows = []
    for name, s in zip(names, summaries):
        step = s.get("step_time") or {}
        contrib = s.get("contributions") or {}
        blocks = s.get("blocks_per_step") or {}
        traffic = s.get("traffic") or {}
        rss = [v for v in (s.get("peak_rss_bytes") or {}).values() if v is not None]
        tta = time_to_target(s, target)
        rows.append(
            [
                name,
                str(s.get("mode", "-")),
                f"{s.get('k', '-')} / {s.get('b', '-')} / {s.get('tau', '-')}",
                fmt_num(s.get("steps_per_s"), 1),
                fmt_ms(step.get("p50")),
                fmt_ms(step.get("p95")),
                fmt_ms(step.get("p99")),
                "not reached" if tta is None else f"{tta:.2f}",
                fmt_num(s.get("final_accuracy")),
                f"{contrib.get('accepted', '-')} / {contrib.get('dropped', '-')}",
                f"{fmt_num(blocks.get('fresh_mean'), 2)} / {fmt_num(blocks.get('stale_mean'), 2)}",
                fmt_bytes(traffic.get("bytes_per_step")),
                fmt_num(traffic.get("msgs_per_step"), 1),
                fmt_bytes(max(rss)) if rss else "-",
            ]
        )
    return headers, rows


def straggler_workers(summary: dict[str, Any]) -> set[int]:
    return {int(s["id"]) for s in summary.get("stragglers") or [] if s.get("role") == "worker"}


def worker_table(summary: dict[str, Any]) -> Table:
    headers = [
        "worker",
        "steps",
        "steps/s",
        "step p50 (ms)",
        "step p95 (ms)",
        "compute p50 (ms)",
        "wait p50 (ms)",
        "accepted share",
        "status",
    ]
    slow = straggler_workers(summary)
    status = summary.get("worker_status") or {}
    rows = []
    for w, st in sorted((summary.get("workers") or {}).items(), key=lambda kv: int(kv[0])):
        rows.append(
            [
                f"{w} (straggler)" if int(w) in slow else str(w),
                str(st.get("steps", "-")),
                fmt_num(st.get("steps_per_s"), 1),
                fmt_ms((st.get("step_time") or {}).get("p50")),
                fmt_ms((st.get("step_time") or {}).get("p95")),
                fmt_ms((st.get("compute_time") or {}).get("p50")),
                fmt_ms((st.get("wait_time") or {}).get("p50")),
                fmt_pct(st.get("accepted_share")),
                str(status.get(w) or "-"),
            ]
        )
    return headers, rows


def straggler_lines(summary: dict[str, Any]) -> list[str]:
    """One sentence per straggler the summary found; empty when none."""
    out = []
    for s in summary.get("stragglers") or []:
        line = f"{s.get('role', '?')} {s.get('id', '?')}: {s.get('metric', '?')} ×{s.get('ratio', '?')} of its peers"
        if s.get("role") == "worker" and "slow_share" in s:
            kind = "persistent" if s.get("persistent") else "intermittent"
            line += f", slow in {fmt_pct(s['slow_share'])} of the run ({kind})"
        out.append(line)
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def numeric(header: str) -> bool:
    """Columns of figures are right-aligned; names, modes and statuses left."""
    return header not in ("run", "mode", "worker", "status")


def to_markdown(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" if not numeric(h) else "---:" for h in headers) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
