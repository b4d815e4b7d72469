"""BlockStore memory discipline: a published version is never written again, and a server holds three
copies of its share (values, accumulator, momentum), not four."""

from __future__ import annotations

import torch
from conftest import linear_store
from torch import nn

from weaksync.config import OptimSection
from weaksync.core import Accept, Apply
from weaksync.runtime.blockstore import BlockStore
from weaksync.runtime.flat import block_values, model_layout
from weaksync.training.optim import lr_function, optimizer_factory
from weaksync.transport.messages import Payloads

CFG = OptimSection(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, schedule="constant")


def store() -> BlockStore:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    layout = model_layout(model, 1, 3)
    initial = block_values(model, layout, layout.blocks_of(0))
    return BlockStore(layout, 0, initial, optimizer_factory(CFG), lr_function(CFG, 10, 2, 2))


def step_all(bs: BlockStore, version: int) -> None:
    for j, block in bs.blocks.items():
        for w in range(2):
            bs.accept(Accept(w, j, version - 1, version - 1, 1.0), torch.full((block.size,), 0.5 + w))
        bs.apply(Apply(j, version, ((0, version - 1, 1.0), (1, version - 1, 1.0)), version, False))


def test_a_sent_version_is_never_modified_by_later_updates() -> None:
    bs = store()
    sent = {j: bs.snapshot(j) for j in bs.blocks}  # what zero-copy replies point at
    copies = {j: t.clone() for j, t in sent.items()}
    step_all(bs, 1)
    step_all(bs, 2)
    for j in bs.blocks:
        assert torch.equal(sent[j], copies[j]), "an update wrote into a tensor that ZeroMQ may still be sending"
        assert not torch.equal(bs.snapshot(j), copies[j]), "the update did not reach the next snapshot"


def test_the_optimizer_keeps_its_state_across_copy_on_write_updates() -> None:
    """Two applies with momentum equal torch.optim.SGD stepping one parameter in place."""
    bs = store()
    j, block = next((j, b) for j, b in bs.blocks.items() if b.num_params)
    ref = nn.Parameter(bs.snapshot(j)[: block.num_params].clone())
    opt = torch.optim.SGD([ref], lr=CFG.lr, momentum=CFG.momentum, weight_decay=CFG.weight_decay)
    for version in (1, 2):
        step_all(bs, version)
        ref.grad = torch.full_like(ref, 1.0)  # the average of 0.5 and 1.5
        opt.step()
    torch.testing.assert_close(bs.snapshot(j)[: block.num_params], ref.detach(), rtol=0, atol=1e-7)


def test_state_is_three_copies_of_the_share() -> None:
    bs = store()
    share = sum(b.size for b in bs.blocks.values()) * 4
    params = sum(b.num_params for b in bs.blocks.values()) * 4
    assert bs.nbytes() == 2 * share  # values (also the send buffer) and accumulators
    step_all(bs, 1)
    assert bs.nbytes() == 2 * share + params  # + momentum for the parameter slots


def test_a_restored_store_steps_exactly_as_the_one_it_was_saved_from() -> None:
    """Values and momentum survive a checkpoint: the next updates are bit-identical."""
    bs = store()
    step_all(bs, 1)
    saved = bs.state()
    copy = store()
    copy.load(saved)
    for version in (2, 3):
        step_all(bs, version)
        step_all(copy, version)
    for j in bs.blocks:
        assert torch.equal(bs.snapshot(j), copy.snapshot(j))


def test_an_oversized_stale_gradient_is_clipped_to_twice_the_recent_norm() -> None:
    """ssp/async servers clip a block's gradient at `clip` × the moving average of its recent norms: ordinary
    steps pass untouched, a tenfold one moves θ as far as a twofold one, and the count is reported."""
    cfg = OptimSection(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    bs = linear_store(cfg, 4, 1, 1, clip=2.0)

    def step(version: int, grad: float) -> torch.Tensor:
        before = bs.snapshot(0).clone()
        bs.accept(Accept(0, 0, version - 1, version - 1, 1.0), torch.full((4,), grad))
        bs.apply(Apply(0, version, ((0, version - 1, 1.0),), version, False))
        return before - bs.snapshot(0)

    for v in range(1, 6):
        assert torch.allclose(step(v, 1.0), torch.full((4,), 0.1))  # the reference: norm 2, untouched
    assert bs.clipped == 0
    assert torch.allclose(step(6, 10.0), torch.full((4,), 0.2))  # clipped to 2 × norm 2
    assert bs.clipped == 1
    assert torch.allclose(step(7, 1.5), torch.full((4,), 0.15))  # within the bound again: untouched


def test_a_restored_store_clips_as_the_one_it_was_saved_from() -> None:
    """The clip's reference norms travel in the checkpoint: after a restore the same oversized gradient is
    clipped to the same step (a fresh reference would take it whole)."""
    cfg = OptimSection(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    saved, restored = linear_store(cfg, 4, 1, 1, clip=2.0), linear_store(cfg, 4, 1, 1, clip=2.0)

    def step(bs: BlockStore, version: int, grad: float) -> None:
        bs.accept(Accept(0, 0, version - 1, version - 1, 1.0), torch.full((4,), grad))
        bs.apply(Apply(0, version, ((0, version - 1, 1.0),), version, False))

    for v in range(1, 4):
        step(saved, v, 1.0)
    restored.load(saved.state())
    step(saved, 4, 10.0)
    step(restored, 4, 10.0)
    assert saved.clipped == restored.clipped == 1
    assert torch.equal(saved.snapshot(0), restored.snapshot(0))


def test_a_batch_of_updates_steps_exactly_as_one_update_at_a_time() -> None:
    """`apply_many` (one multi-tensor step per LR) against `apply` per block: bit-identical values and
    momentum, with updates of different LRs (contributor counts) in one batch and a BatchNorm buffer block."""
    one, batched = store(), store()
    for version in (1, 2, 3):
        actions = []
        for j, block in one.blocks.items():
            workers = (0, 1) if j % 2 == 0 or version == 1 else (0,)  # 1 or 2 contributors: two LRs
            grads = [
                torch.randn(block.size, generator=torch.Generator().manual_seed(10 * version + j + w)) for w in workers
            ]
            for w, grad in zip(workers, grads):
                accept = Accept(w, j, version - 1, version - 1, 1.0)
                one.accept(accept, grad)
                batched.accept_many([((j,), 1.0, [grad])])
            actions.append(Apply(j, version, tuple((w, version - 1, 1.0) for w in workers), version, False))
        for action in actions:
            one.apply(action)
        batched.apply_many(actions)
    for j in one.blocks:
        assert torch.equal(one.snapshot(j), batched.snapshot(j))
    for j, block in one.blocks.items():
        if block.num_params:
            assert torch.equal(one.block_state(j)["momentum_buffer"], batched.block_state(j)["momentum_buffer"])


def test_a_checkpoint_of_per_block_optimizers_still_loads() -> None:
    """Checkpoints written before the servers' optimizer became one multi-tensor optimizer held one
    `state_dict()` per block; a restored store steps from their momentum exactly as from the new form."""
    bs = store()
    step_all(bs, 1)
    saved = bs.state()
    old = {k: v for k, v in saved.items() if k != "optimizer_state"}
    old["optimizers"] = {
        j: {"state": {0: st}, "param_groups": [{"params": [0]}]} for j, st in saved["optimizer_state"].items()
    }
    new_form, old_form = store(), store()
    new_form.load(saved)
    old_form.load(old)
    step_all(new_form, 2)
    step_all(old_form, 2)
    for j in bs.blocks:
        assert torch.equal(new_form.snapshot(j), old_form.snapshot(j))


def test_a_whole_group_steps_as_its_blocks_one_at_a_time_and_splits_without_losing_state() -> None:
    """The share as one group (one add per push frame, one flat step per update) against the same gradients
    block by block: bit-identical values and momentum; then updates of single blocks split the group, and
    the parts go on from the group's values, gradients and momentum."""
    whole, single = store(), store()
    blocks = tuple(sorted(whole.blocks))
    for version in (1, 2, 3):
        contributors = tuple((w, version - 1, 1.0) for w in (0, 1))
        for w in (0, 1):
            grads = [torch.randn(whole.blocks[j].size, generator=torch.Generator().manual_seed(7 * version + w + j))
                     for j in blocks]  # fmt: skip
            whole.accept_many([(blocks, 1.0, Payloads(torch.cat(grads), [g.numel() for g in grads]))])
            for j, grad in zip(blocks, grads):
                single.accept(Accept(w, j, version - 1, version - 1, 1.0), grad)
        if version < 3:
            whole.apply(Apply(blocks, version, contributors, version, False))
            assert len({id(g) for g in whole.groups.values()}) == 1
        else:  # block by block: the group splits
            for j in blocks:
                whole.apply(Apply(j, version, contributors, version, False))
            assert len({id(g) for g in whole.groups.values()}) == len(blocks)
        for j in blocks:
            single.apply(Apply(j, version, contributors, version, False))
    for j, block in whole.blocks.items():
        assert torch.equal(whole.snapshot(j), single.snapshot(j))
        if block.num_params:
            assert torch.equal(whole.block_state(j)["momentum_buffer"], single.block_state(j)["momentum_buffer"])
