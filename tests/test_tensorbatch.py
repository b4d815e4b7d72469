"""The server's batched tensor work keeps the core's order where it matters: a gradient accepted after its
block's update goes into the next round, and a reply carries the version the core named."""

from __future__ import annotations

import torch
from conftest import linear_store

from weaksync.config import OptimSection
from weaksync.core import Accept, Apply, Send
from weaksync.runtime.tensorbatch import TensorBatch

CFG = OptimSection(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")


def update(version: int) -> Apply:
    return Apply(0, version, ((0, version - 1, 1.0),), version, False)


def test_an_accept_after_its_blocks_update_goes_into_the_next_round() -> None:
    store = linear_store(CFG, 2, 1, 1)
    start = store.snapshot(0).clone()
    batch = TensorBatch(store)
    batch.accept(Accept(0, 0, 0, 0, 1.0), [torch.ones(2)])
    batch.apply(update(1))
    batch.send(Send(0, 0, 1))
    batch.accept(Accept(0, 0, 1, 1, 1.0), [torch.full((2,), 3.0)])  # the next round's gradient
    replies = batch.done()
    assert torch.equal(replies[0][1][0], start - 1.0), "the reply carries version 1: one step of gradient 1"
    batch.apply(update(2))
    batch.done()
    assert torch.equal(store.snapshot(0), start - 4.0), "the second gradient made the second update alone"


def test_a_reply_before_an_update_of_its_block_carries_the_version_before_it() -> None:
    store = linear_store(CFG, 2, 1, 1)
    start = store.snapshot(0).clone()
    batch = TensorBatch(store)
    batch.send(Send(0, 0, 0))  # a pull answered with version 0 ...
    batch.accept(Accept(0, 0, 0, 0, 1.0), [torch.ones(2)])
    batch.apply(update(1))  # ... before the update to version 1 in the same batch
    batch.send(Send(1, 0, 1))
    (first, [old]), (second, [new]) = batch.done()
    assert (first.version, second.version) == (0, 1)
    assert torch.equal(old, start) and torch.equal(new, start - 1.0)
