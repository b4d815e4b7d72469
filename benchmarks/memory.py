"""Peak memory per process with ResNet-50 (32×32 variant): servers and workers against their bounds.

    python benchmarks/memory.py --out runs/bench-memory

Bounds (from the evidence issue): a server stays within the Python+torch baseline plus 4× its share of the
parameters (values, momentum, accumulator, send snapshot), a worker within the baseline plus 4× the model.

Every process comes from the same forkserver (torch and weaksync preloaded), and Linux resets a forked
child's peak RSS to what it maps at the fork, so peaks compare directly. Three references are measured in
children of that forkserver:
  idle     the baseline: Python + torch + weaksync imported, nothing built;
  compute  the same model's forward and backward at the same batch, no optimizer and no messaging: the
           activations and gradients any trainer needs, so `worker - compute` is what weaksync adds;
  DDP      a PyTorch DistributedDataParallel rank (gloo, SGD with momentum) at the same batch.
A weaksync bsp run (2 workers, 2 servers) gives the servers' and workers' peaks (summary.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from weaksync.bench.ddp import run_ddp
from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config
from weaksync.runtime.flat import model_layout
from weaksync.runtime.launcher import PRELOAD, run_local
from weaksync.runtime.resources import peak_rss_bytes, return_large_frees_to_os
from weaksync.training.models import build_model

MiB = 1 << 20


def _idle_child(queue: Any) -> None:
    queue.put(peak_rss_bytes())


def _compute_child(queue: Any, model_name: str, batch: int, steps: int) -> None:
    return_large_frees_to_os()  # the same allocator setting as weaksync's processes, so the difference is ours
    torch.set_num_threads(1)
    model = build_model(model_name, 10, 3, 32)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for _ in range(steps):
        model.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    queue.put(peak_rss_bytes())


def reference_peaks(model_name: str, batch: int, steps: int) -> dict[str, int]:
    """Peak RSS of an idle forkserver child and of a bare forward/backward child, in bytes."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    out = {}
    for name, target, args in (("idle", _idle_child, ()), ("compute", _compute_child, (model_name, batch, steps))):
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(queue, *args))
        proc.start()
        out[name] = queue.get(timeout=600)
        proc.join()
    return out


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-memory"))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per worker (peaks settle after the first)")
    args = parser.parse_args()
    workers, servers = 2, 2
    overrides = {
        "model.name": args.model, "data.name": "synthetic-cifar", "data.synthetic_size": 200,
        "cluster.workers": workers, "cluster.servers": servers, "sync.mode": "bsp",
        "train.steps": args.steps, "train.batch_size": args.batch_size, "train.eval_interval": 600.0,
        "run.out_dir": str(args.out),
    }  # fmt: skip
    refs = reference_peaks(args.model, args.batch_size, args.steps)
    ws = run_local(load_config(None, {**overrides, "run.name": f"weaksync-b{args.batch_size}"})).summary
    ddp = run_ddp(load_config(None, {**overrides, "run.name": f"ddp-b{args.batch_size}"})).summary

    model = build_model(args.model, 10, 3, 32)
    layout = model_layout(model, servers, ws.get("num_blocks"))
    model_bytes = layout.total * 4
    share = layout.bytes_per_server()
    idle, compute = refs["idle"], refs["compute"]
    rows = []
    for name, peak in sorted(ws["peak_rss_bytes"].items()):
        role, ident = name.split("-")
        if role == "server":
            bound, what = idle + 4 * share[int(ident)], f"idle + 4 × share ({share[int(ident)] / MiB:.0f} MiB)"
        else:
            bound, what = idle + 4 * model_bytes, f"idle + 4 × model ({model_bytes / MiB:.0f} MiB)"
        rows.append((f"weaksync {name}", peak, bound, what))
    for name, peak in sorted(ddp["peak_rss_bytes"].items()):
        rows.append((f"DDP {name}", peak, None, "reference"))
    lines = [
        f"{args.model}, batch {args.batch_size}, {workers} workers, {servers} servers, B = {ws.get('num_blocks')}; "
        f"idle baseline {idle / MiB:.0f} MiB, forward/backward only {compute / MiB:.0f} MiB",
        "",
        "| process | peak RSS (MiB) | above idle (MiB) | above forward/backward (MiB) | bound (MiB) | bound is "
        "| within |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, peak, bound, what in rows:
        within = "–" if bound is None else ("yes" if peak <= bound else "NO")
        above_compute = f"{(peak - compute) / MiB:.0f}" if "server" not in name else "–"
        lines.append(f"| {name} | {peak / MiB:.0f} | {(peak - idle) / MiB:.0f} | {above_compute} "
                     f"| {'–' if bound is None else f'{bound / MiB:.0f}'} | {what} | {within} |")  # fmt: skip
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-b{args.batch_size}.md").write_text(text + "\n")
    (args.out / f"memory-b{args.batch_size}.json").write_text(json.dumps({"refs": refs, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
