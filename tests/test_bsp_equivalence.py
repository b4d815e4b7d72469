"""BSP through the real cores and tensor stores equals single-process SGD on the union of the minibatches.

ServerCore + BlockStore (S = 2) and WorkerCore + FlatModel (N = 3) run in-process under the harness's
random delivery orders; the servers' θ after a few steps must match torch.optim.SGD (momentum, Nesterov,
weight decay, constant LR) on the concatenated minibatches of each step. A BatchNorm model checks that
buffer slots are set to the average of the workers' values while parameter slots take an optimizer step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from harness import Harness, Hooks
from torch import nn

from weaksync.config import OptimSection
from weaksync.core import Accept, Apply, BlockLayout, StepPlan, make_policy
from weaksync.runtime.blockstore import BlockStore
from weaksync.runtime.flat import FlatModel, block_values, model_layout
from weaksync.training.optim import lr_function, momentum_function, optimizer_factory

N, S, B, STEPS, BATCH = 3, 2, 5, 4, 6
CFG = OptimSection(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="constant")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def minibatches(seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """batches[step][worker] = (x, y), fixed."""
    g = torch.Generator().manual_seed(seed)
    return [
        [(torch.randn(BATCH, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)) for _ in range(N)]
        for _ in range(STEPS)
    ]


class TorchHooks(Hooks):
    """Gradients from FlatModels, Accept/Apply on BlockStores, replies carry the servers' snapshots."""

    def __init__(self, model: nn.Module, layout: BlockLayout, batches: list) -> None:
        self.layout = layout
        self.batches = batches
        self.flats = [FlatModel(copy.deepcopy(model), layout) for _ in range(N)]
        theta0 = self.flats[0].values.clone()
        self.theta0 = theta0
        for flat in self.flats:  # make sure the initial pull, not the copy, is what workers start from
            flat.values.add_(1.0)
        self.stores = [
            BlockStore(
                layout,
                s,
                block_values(model, layout, layout.blocks_of(s)),
                optimizer_factory(CFG),
                lr_function(CFG, STEPS, N, N),
                momentum_function(CFG, N),
            )
            for s in range(S)
        ]
        self.pushed: list[list[torch.Tensor]] = [[] for _ in range(N)]
        self.seen: list[list[torch.Tensor]] = [[] for _ in range(N)]  # θ each step computed on
        self.applied: list[Apply] = []

    def compute(self, worker: int, plan: StepPlan) -> torch.Tensor:
        flat = self.flats[worker]
        self.seen[worker].append(flat.values.clone())
        x, y = self.batches[plan.step][worker]
        flat.model.train()
        flat.zero_grad()
        nn.functional.cross_entropy(flat.model(x), y).backward()
        vector = flat.push_vector()
        self.pushed[worker].append(vector)
        return vector

    def push_payload(self, worker: int, block: int, computed: torch.Tensor) -> torch.Tensor:
        b = self.layout.blocks[block]
        return computed[b.start : b.stop]

    def accept(self, server: int, action: Accept, payload: torch.Tensor) -> None:
        self.stores[server].accept(action, payload)

    def apply(self, server: int, action: Apply) -> None:
        self.applied.append(action)
        self.stores[server].apply(action)

    def reply_payload(self, server: int, block: int, version: int) -> torch.Tensor:
        return self.stores[server].snapshot(block)

    def install(self, worker: int, block: int, payload: torch.Tensor) -> None:
        self.flats[worker].install(self.layout.blocks[block], payload)

    def theta(self) -> torch.Tensor:
        """The servers' θ, assembled in layout order."""
        out = torch.empty(self.layout.total)
        for store in self.stores:
            for j in store.blocks:
                b = self.layout.blocks[j]
                out[b.start : b.stop] = store.snapshot(j)
        return out


def run_bsp(
    make_model, seed: int, split: bool, steps: int = STEPS, mode: str = "bsp", **thresholds: int
) -> tuple[TorchHooks, nn.Module]:
    torch.manual_seed(0)
    model = make_model()
    reference = copy.deepcopy(model)
    layout = model_layout(model, S, B)
    hooks = TorchHooks(model, layout, minibatches())
    owners = [b.server for b in layout.blocks]
    policy = make_policy(mode, N, B, **thresholds)
    Harness(policy, owners, steps, seed=seed, split_steps=split, hooks=hooks).run()
    return hooks, reference


def reference_sgd(model: nn.Module, batches: list) -> torch.Tensor:
    """Single-process SGD, mean loss over the union of the N minibatches of each step."""
    opt = torch.optim.SGD(
        model.parameters(), lr=CFG.lr, momentum=CFG.momentum, nesterov=True, weight_decay=CFG.weight_decay
    )
    for step in batches:
        x = torch.cat([x for x, _ in step])
        y = torch.cat([y for _, y in step])
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(("seed", "split"), [(0, False), (1, True), (2, True)])
def test_bsp_equals_single_process_sgd_on_the_union(seed: int, split: bool) -> None:
    hooks, reference = run_bsp(mlp, seed, split)
    assert len(hooks.applied) == STEPS * B
    assert all(len(a.contributors) == N for a in hooks.applied)
    expected = reference_sgd(reference, minibatches())
    got = hooks.theta()
    assert got.numel() == expected.numel() == hooks.layout.num_params  # no buffers in this model
    assert not torch.allclose(got, hooks.theta0)  # it did train
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["partial", "partial-pull", "backup"])
def test_a_weak_mode_at_full_quorums_reproduces_bsp_exactly(mode: str) -> None:
    """No hidden rule of the weak modes (grace, folding, momentum correction) changes what a full quorum
    computes: partial with k = N, b = B, τ = 0 takes the same steps, bit for bit, as bsp."""
    expected, _ = run_bsp(bn_mlp, seed=5, split=True)
    got, _ = run_bsp(bn_mlp, seed=5, split=True, mode=mode, k=N, b=B, tau=0)
    torch.testing.assert_close(got.theta(), expected.theta(), atol=0, rtol=0)
    assert [a.contributors for a in got.applied] == [a.contributors for a in expected.applied]


def test_every_worker_computes_each_step_on_the_same_theta() -> None:
    """Step 0 on θ₀ from the initial pull (not the worker's own copy), step t on the servers' θ_t."""
    hooks, _ = run_bsp(mlp, seed=3, split=True)
    for w in range(N):
        torch.testing.assert_close(hooks.seen[w][0], hooks.theta0, atol=0, rtol=0)
        for t in range(STEPS):
            torch.testing.assert_close(hooks.seen[w][t], hooks.seen[0][t], atol=0, rtol=0)
    assert not torch.equal(hooks.seen[0][1], hooks.seen[0][0])


def test_batchnorm_buffers_are_averaged_not_stepped() -> None:
    hooks, _ = run_bsp(bn_mlp, seed=4, split=True, steps=1)
    layout = hooks.layout
    n = layout.num_params
    assert layout.total > n  # running_mean and running_var are part of θ
    assert any(0 < b.num_params < b.size for b in layout.blocks)  # one block holds both kinds
    vectors = torch.stack([hooks.pushed[w][0] for w in range(N)])
    got = hooks.theta()
    # buffer slots: the plain average of what the workers' forward passes left there
    torch.testing.assert_close(got[n:], vectors[:, n:].mean(0), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got[n:], hooks.theta0[n:])
    # parameter slots: one Nesterov SGD step from θ₀ with the averaged gradient (first step: buf = d_p)
    d_p = vectors[:, :n].mean(0) + CFG.weight_decay * hooks.theta0[:n]
    expected = hooks.theta0[:n] - CFG.lr * (1 + CFG.momentum) * d_p
    torch.testing.assert_close(got[:n], expected, atol=1e-6, rtol=1e-5)
