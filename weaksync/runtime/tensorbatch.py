"""The tensor work of one batch of core actions, deferred and done together where the order allows.

A message or timer makes the core emit Accepts, Applies and Sends, each naming a group of blocks. Deferred,
the adds of a batch are one call into the store and its updates one optimizer step (`BlockStore.accept_many`,
`apply_many`: a whole group is one flat tensor operation).
The core's order still holds wherever it matters: an Accept never moves before an Apply of its block, an
Apply never overtakes an earlier Apply of its block or a reply that must carry the version before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.actions import Accept, Apply, Send
from .blockstore import BlockStore


class TensorBatch:
    """Accepts, updates and replies of one message (or timer), in the core's order as far as it matters."""

    def __init__(self, store: BlockStore, progress: float | None = None):
        """`progress`: the workers' average steps, for the LR schedule of every update in the batch (the core
        made all of its actions before any is performed, so it is one value)."""
        self.store = store
        self.progress = progress
        self.accepts: list[tuple[tuple[int, ...], float, Sequence[torch.Tensor]]] = []  # (blocks, weight, gradients)
        self.applies: list[Apply] = []
        self.applying: set[int] = set()
        self.sends: list[Send] = []
        self.sending: set[int] = set()  # blocks whose replies take the values as they are before the next Apply
        self.replies: list[tuple[Send, Sequence[torch.Tensor]]] = []

    def accept(self, action: Accept, payloads: Sequence[torch.Tensor]) -> None:
        """The gradients of `action`'s blocks, in its order (a message's `Payloads` when they are all of it:
        a whole group's are then one add)."""
        if not self.applying.isdisjoint(action.blocks):  # the gradient belongs to the round after that update
            self.flush()
        self.accepts.append((action.blocks, action.weight, payloads))

    def apply(self, action: Apply) -> None:
        if not (self.applying.isdisjoint(action.blocks) and self.sending.isdisjoint(action.blocks)):
            self.flush()
        self.applies.append(action)
        self.applying.update(action.blocks)

    def send(self, action: Send) -> None:
        self.sends.append(action)
        self.sending.update(action.blocks)

    def flush(self) -> None:
        """Do the pending adds, then the pending updates, then take the replies' snapshots."""
        if self.accepts:
            self.store.accept_many(self.accepts)
        if self.applies:
            self.store.apply_many(self.applies, self.progress)
        self.replies += [(send, self.store.reply(send.blocks)) for send in self.sends]
        self.accepts, self.applies, self.sends = [], [], []
        self.applying, self.sending = set(), set()

    def done(self) -> list[tuple[Send, Sequence[torch.Tensor]]]:
        """Flush, and hand over every reply with the values it carries (one tensor per block; a whole
        group's as `Payloads`, its values tensor as is)."""
        self.flush()
        replies, self.replies = self.replies, []
        return replies
