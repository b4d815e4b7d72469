"""Peak memory per process with ResNet-50 (32×32 variant): servers and workers against their bounds.

    python benchmarks/memory.py --out runs/bench-memory

Bounds (from the evidence issue): a server stays within the Python+torch baseline plus 4× its share of the
parameters (values, momentum, accumulator, send buffer), a worker within the baseline plus 4× the model.

Every process comes from the same forkserver (torch and weaksync preloaded), and Linux resets a forked
child's peak RSS to what it maps at the fork, so peaks compare directly. Four references are measured in
children of that forkserver, each with the allocator setting of the role it is compared with (servers fix
glibc's mmap threshold with `return_large_frees_to_os`; workers keep glibc's adaptive one, as PyTorch does):
  idle     Python + torch + weaksync imported, nothing run;
  warm     idle, then what a server runs on a model of negligible size: build (and drop) the tiny digits CNN,
           take SGD steps with momentum and weight decay on a 1,000-element parameter. It is torch's first-use
           cost (code pages, lazily built kernels), which does not grow with the model. The server bound is
           judged against it;
  compute  the same model's forward and backward at the same batch, no optimizer and no messaging: the
           activations and gradients any trainer needs. The worker bound is judged against it;
  DDP      a PyTorch DistributedDataParallel rank (gloo, SGD with momentum) at the same batch (plain PyTorch
           allocator), for comparison.
A weaksync bsp run (2 workers, 2 servers) gives the servers' and workers' peaks (summary.json). The table also
gives every peak above idle, so the bounds can be read against that stricter baseline too.
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


def _warm_child(queue: Any) -> None:
    """What a server runs, on a model of negligible size: build and drop a model, take optimizer steps."""
    return_large_frees_to_os()
    torch.set_num_threads(1)
    build_model("digits-cnn", 10, 1, 8)  # built and dropped, as a server does with the real model
    param = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        param.grad = torch.ones(1000)
        opt.step()
    queue.put(peak_rss_bytes())


def _compute_child(queue: Any, model_name: str, batch: int, steps: int) -> None:
    torch.set_num_threads(1)  # glibc's default allocator, as in a weaksync worker, so the difference is ours
    model = build_model(model_name, 10, 3, 32)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for _ in range(steps):
        model.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    queue.put(peak_rss_bytes())


def reference_peaks(model_name: str, batch: int, steps: int) -> dict[str, int]:
    """Peak RSS of the idle, warm and bare forward/backward forkserver children, in bytes."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    out = {}
    children = (
        ("idle", _idle_child, ()),
        ("warm", _warm_child, ()),
        ("compute", _compute_child, (model_name, batch, steps)),
    )
    for name, target, args in children:
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
    idle, warm, compute = refs["idle"], refs["warm"], refs["compute"]
    rows = []
    for name, peak in sorted(ws["peak_rss_bytes"].items()):
        role, ident = name.split("-")
        server = role == "server"
        judged = (warm, "warm", share[int(ident)], "share") if server else (compute, "fwd/bwd", model_bytes, "model")
        rows.append((f"weaksync {name}", peak, *judged))
    for name, peak in sorted(ddp["peak_rss_bytes"].items()):
        rows.append((f"DDP {name}", peak, compute, "fwd/bwd", model_bytes, "model"))
    lines = [
        f"{args.model}, batch {args.batch_size}, {workers} workers, {servers} servers, B = {ws.get('num_blocks')}; "
        f"model {model_bytes / MiB:.0f} MiB, shares {', '.join(f'{b / MiB:.0f}' for b in share)} MiB; baselines: "
        f"idle {idle / MiB:.0f} MiB, warm {warm / MiB:.0f} MiB, forward/backward only {compute / MiB:.0f} MiB",
        "",
        "| process | peak RSS (MiB) | above idle (MiB) | baseline | above baseline (MiB) | above baseline in units "
        "| unit | bound | within |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, peak, base, base_name, unit, unit_name in rows:
        units = (peak - base) / unit
        bound, within = ("4", "yes" if units <= 4 else "NO") if name.startswith("weaksync") else ("–", "–")
        lines.append(f"| {name} | {peak / MiB:.0f} | {(peak - idle) / MiB:.0f} | {base_name} "
                     f"| {(peak - base) / MiB:.0f} | {units:.2f} | {unit_name} ({unit / MiB:.0f} MiB) "
                     f"| {bound} | {within} |")  # fmt: skip
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-b{args.batch_size}.md").write_text(text + "\n")
    (args.out / f"memory-b{args.batch_size}.json").write_text(json.dumps({"refs": refs, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
