"""What the protocol cores ask their driver to do. Plain data: the runtime performs them on sockets and
tensors, the simulator on virtual time; tests read them directly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Self, TypeVar, overload


def _blocks(value: int | tuple[int, ...]) -> tuple[int, ...]:
    """An action names the blocks it concerns as a tuple; one block may be given as a plain int."""
    return (value,) if isinstance(value, int) else tuple(value)


class _OnBlocks:
    """An action on a group of blocks that share their protocol state (ServerCore's groups): what it says
    holds for each of them. `block` is the one block of a one-block action."""

    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple):
            object.__setattr__(self, "blocks", _blocks(self.blocks))

    @property
    def block(self) -> int:
        if len(self.blocks) != 1:
            raise ValueError(f"{type(self).__name__} concerns blocks {self.blocks}, not one block")
        return self.blocks[0]


@dataclass(frozen=True)
class Accept(_OnBlocks):
    """Add `weight` × this push's gradient of each block to its accumulator for the update to `version + 1`."""

    worker: int
    blocks: tuple[int, ...]
    base: int
    version: int
    weight: float


@dataclass(frozen=True)
class Drop(_OnBlocks):
    """A push or pull of `blocks` that is not used; `reason` is one of DROP_REASONS (counted and logged,
    once per block)."""

    worker: int
    blocks: tuple[int, ...]
    base: int
    version: int
    reason: str


@dataclass(frozen=True)
class Apply(_OnBlocks):
    """Average the accepted contributions of each of `blocks`, take one optimizer step, and advance to `version`.

    `contributors` are (worker, base version, weight) in arrival order; `step` is the largest worker step
    among them (drives the LR schedule); `by_deadline` tells the quorum was cut short by the push deadline
    or by auto's cut;
    `staleness` is the moving average of the staleness of the gradients this server accepted (drives the
    momentum correction, see training/optim.py); `quorum` is the k in force when the round closed, or the
    contributors of a cut round (the LR rule scales by contributors / quorum; None: the policy's k).
    """

    blocks: tuple[int, ...]
    version: int
    contributors: tuple[tuple[int, int, float], ...]
    step: int
    by_deadline: bool
    staleness: float = 0.0
    quorum: int | None = None


@dataclass(frozen=True)
class Send(_OnBlocks):
    """Send the current value of `blocks` (each at `version`) to `worker`."""

    worker: int
    blocks: tuple[int, ...]
    version: int


class PushRequest(NamedTuple):
    """Worker → server: the gradient of `block` computed at base version `base` during step `step` (a named
    tuple: a worker makes one per block and step, a third of the cost of a frozen dataclass)."""

    block: int
    base: int
    step: int


class PullRequest(NamedTuple):
    """Worker → server: send `block` once its version exceeds `want_gt`; `clock` = steps completed."""

    block: int
    want_gt: int
    clock: int


Req = TypeVar("Req", PushRequest, PullRequest)


class _Cut(Protocol):  # core.layout.Cut (layout imports nothing from here; this module stays the lowest)
    @property
    def blocks(self) -> tuple[int, ...]: ...
    def pick(self, values: Sequence[int]) -> tuple[int, ...]: ...


class _Columns(Sequence[Req]):
    """A worker's requests of one kind, as columns: `blocks`, one value per block, and one step figure for all.
    A step asks for every block it holds, so it says so once per step and not once per block (at B = 256 a
    worker step made 512 request objects, the largest part of a simulated worker's cost). It is still a
    sequence of per-block requests for whoever reads them one by one (tests, the harness)."""

    __slots__ = ("blocks", "_values", "_tag")
    _item: type

    def __init__(self, blocks: Sequence[int], values: Sequence[int], tag: int):
        if len(blocks) != len(values):
            raise ValueError(f"{len(blocks)} blocks but {len(values)} values")
        self.blocks: tuple[int, ...] = tuple(blocks)
        self._values: tuple[int, ...] = tuple(values)
        self._tag = tag

    def __len__(self) -> int:
        return len(self.blocks)

    @overload
    def __getitem__(self, i: int) -> Req: ...
    @overload
    def __getitem__(self, i: slice) -> Self: ...
    def __getitem__(self, i: int | slice) -> Req | Self:
        if isinstance(i, slice):
            return type(self)(self.blocks[i], self._values[i], self._tag)
        return self._item(self.blocks[i], self._values[i], self._tag)

    def part(self, cut: _Cut) -> Self:
        """The requests of one message of a cut of these (core.layout.MessageCutter)."""
        part = object.__new__(type(self))
        part.blocks, part._values, part._tag = cut.blocks, cut.pick(self._values), self._tag
        return part

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Columns):
            return (type(self), self.blocks, self._values, self._tag) == (
                type(other),
                other.blocks,
                other._values,
                other._tag,
            )
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal to a list of its requests, so not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class Pushes(_Columns[PushRequest]):
    """One step's pushes: block `blocks[i]` computed at base version `bases[i]` during `step`."""

    _item = PushRequest

    @property
    def bases(self) -> tuple[int, ...]:
        return self._values

    @property
    def step(self) -> int:
        return self._tag


class Pulls(_Columns[PullRequest]):
    """Pulls sent together: `blocks[i]` once newer than `wants[i]`; `clock` = steps completed."""

    _item = PullRequest

    @property
    def wants(self) -> tuple[int, ...]:
        return self._values

    @property
    def clock(self) -> int:
        return self._tag


DROP_REASONS = (
    "stale",  # staleness v - u > τ
    "duplicate",  # this worker already contributed to the current version (only without fold_repeats)
    "future",  # base version newer than the block: a corrupt or foreign message
    "unknown-block",  # block not owned by this server
    "unknown-worker",  # worker id outside [0, N)
    "left",  # the worker was declared gone
    "malformed",  # wrong shape/dtype/non-finite payload (detail in the log)
    "unregistered",  # a push or pull from a worker that has not said hello (the server needs it registered)
)


@dataclass(frozen=True)
class EndRun:
    """The run's step budget is spent (`steps` worker steps, whoever did them): tell every worker it is done."""

    steps: int


@dataclass(frozen=True)
class Finished:
    """Answer a pull after the end of the run: this worker is done."""

    worker: int


@dataclass(frozen=True)
class Welcome:
    """Answer a hello: the worker is registered and goes on from `clock` steps; `rejoined` tells that it had
    departed (said bye, died or fell silent) and is waited for again."""

    worker: int
    clock: int
    rejoined: bool


@dataclass(frozen=True)
class Refuse:
    """Answer a hello that cannot be accepted (a worker id outside the cluster, or the driver's verdict)."""

    worker: int
    reason: str


@dataclass(frozen=True)
class Expired:
    """A registered worker was silent for `silent_for` seconds: it is no longer waited for (until it speaks)."""

    worker: int
    silent_for: float


@dataclass(frozen=True)
class Revived:
    """A worker declared silent spoke again: it is waited for again, with its clock and parked pulls."""

    worker: int


@dataclass(frozen=True)
class Orphaned:
    """Every registered worker has been gone for `waited` seconds and nobody said stop: the server may leave."""

    waited: float


ServerAction = Accept | Drop | Apply | Send | EndRun | Finished | Welcome | Refuse | Expired | Revived | Orphaned
