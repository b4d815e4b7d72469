"""Pure protocol core: layout, policy and the server/worker state machines. No I/O, no tensors."""

from .actions import Accept, Apply, Drop, PullRequest, PushRequest, Send
from .layout import Block, BlockLayout, TensorSpec, build_layout, order_tensors, resolve_num_blocks
from .policy import MODES, SyncPolicy, make_policy, resolve_count
from .server import ServerCore
from .worker import StepPlan, WorkerCore

__all__ = [
    "Accept",
    "Apply",
    "Block",
    "BlockLayout",
    "Drop",
    "MODES",
    "PullRequest",
    "PushRequest",
    "Send",
    "ServerCore",
    "StepPlan",
    "SyncPolicy",
    "TensorSpec",
    "WorkerCore",
    "build_layout",
    "make_policy",
    "order_tensors",
    "resolve_count",
    "resolve_num_blocks",
]
