"""Block layout: deterministic, equal blocks, parameters before buffers, balanced servers, stable digest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weaksync.core import BlockLayout, TensorSpec, build_layout, order_tensors, resolve_num_blocks
from weaksync.runtime.flat import model_layout, tensor_specs


def specs(*sizes: int, buffers: tuple[int, ...] = ()) -> tuple[TensorSpec, ...]:
    """Parameters p0.. of the given sizes, then float buffers b0.."""
    params = [TensorSpec(f"p{i}", (n,), "float32", False) for i, n in enumerate(sizes)]
    bufs = [TensorSpec(f"b{i}", (n,), "float32", True) for i, n in enumerate(buffers)]
    return order_tensors(params, bufs)


def check_cover(layout: BlockLayout) -> None:
    """Blocks tile [0, total) in order, are equal except a smaller last one, and each has an owner."""
    blocks = layout.blocks
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert blocks[0].start == 0 and blocks[-1].stop == layout.total
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    size = blocks[0].size
    assert all(b.size == size for b in blocks[:-1])
    assert 0 < blocks[-1].size <= size
    assert all(0 <= b.server < layout.num_servers for b in blocks)


def test_layout_is_deterministic() -> None:
    a = build_layout(specs(100, 37, 5, buffers=(8, 8)), 6, 3)
    b = build_layout(specs(100, 37, 5, buffers=(8, 8)), 6, 3)
    assert a == b and a.digest == b.digest


def test_blocks_are_equal_and_only_the_last_is_smaller() -> None:
    layout = build_layout(specs(100), 7, 2)  # ceil(100/7) = 15: six of 15 and one of 10
    check_cover(layout)
    assert [b.size for b in layout.blocks] == [15] * 6 + [10]


def test_parameters_come_before_buffers() -> None:
    params = [TensorSpec("lin.weight", (4, 3), "float32", False), TensorSpec("lin.bias", (4,), "float32", False)]
    buffers = [
        TensorSpec("bn.running_mean", (4,), "float32", True),
        TensorSpec("bn.running_var", (4,), "float32", True),
    ]
    ordered = order_tensors(params, buffers)
    assert [t.name for t in ordered] == ["lin.weight", "lin.bias", "bn.running_mean", "bn.running_var"]
    layout = build_layout(ordered, 4, 2)  # 24 elements, 16 parameters: blocks of 6
    assert layout.num_params == 16
    assert [b.num_params for b in layout.blocks] == [6, 6, 4, 0]
    assert [b.param_stop for b in layout.blocks] == [6, 12, 16, 18]


def test_integer_buffers_are_not_part_of_theta() -> None:
    bufs = [
        TensorSpec("bn.running_mean", (4,), "float32", True),
        TensorSpec("bn.num_batches_tracked", (), "int64", True),
        TensorSpec("mask", (4,), "bool", True),
        TensorSpec("half", (2,), "float16", True),
    ]
    ordered = order_tensors([TensorSpec("w", (3,), "float32", False)], bufs)
    assert [t.name for t in ordered] == ["w", "bn.running_mean", "half"]
    assert all(t.is_buffer for t in ordered[1:]) and not ordered[0].is_buffer


def test_tensor_specs_of_a_batchnorm_model() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    names = [t.name for t in tensor_specs(model)]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    layout = model_layout(model, 2, 4)
    assert layout.total == 12 + 4 + 4 + 4 + 8 and layout.num_params == 24


@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=6),
    buffers=st.lists(st.integers(1, 50), max_size=3),
    servers=st.integers(1, 5),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_layout_properties(sizes: list[int], buffers: list[int], servers: int, data: st.DataObject) -> None:
    tensors = specs(*sizes, buffers=tuple(buffers))
    total = sum(sizes) + sum(buffers)
    num_blocks = data.draw(st.integers(servers, max(servers, min(total, 40))))
    length = math.ceil(total / num_blocks)
    if num_blocks > total or (num_blocks - 1) * length >= total:
        with pytest.raises(ValueError, match="blocks="):
            build_layout(tensors, num_blocks, servers)
        return
    layout = build_layout(tensors, num_blocks, servers)
    check_cover(layout)
    assert layout.num_blocks == num_blocks and layout.total == total
    n_params = sum(sizes)
    for b in layout.blocks:  # at most one parameter part, then one buffer part
        assert b.start <= b.param_stop <= b.stop
        assert b.param_stop == min(max(n_params, b.start), b.stop)
    load = layout.bytes_per_server()
    assert sum(load) == 4 * total
    assert max(load) - min(load) <= 4 * layout.blocks[0].size  # balanced within one block
    assert all(layout.blocks_of(s) for s in range(servers))  # every server owns a block
    assert sorted(b.index for s in range(servers) for b in layout.blocks_of(s)) == list(range(num_blocks))


def test_servers_are_balanced_by_bytes() -> None:
    layout = build_layout(specs(1000), 10, 3)
    assert [len(layout.blocks_of(s)) for s in range(3)] == [4, 3, 3]
    assert layout.bytes_per_server() == [1600, 1200, 1200]


# -- digest --------------------------------------------------------------------------------------------


BASE = (
    TensorSpec("a", (4, 6), "float32", False),
    TensorSpec("b", (6,), "float32", False),
    TensorSpec("m", (6,), "float32", True),
)


def digest(tensors: tuple[TensorSpec, ...] = BASE, blocks: int = 4, servers: int = 2) -> str:
    return build_layout(tensors, blocks, servers).digest


@pytest.mark.parametrize(
    "changed",
    [
        (TensorSpec("A", (4, 6), "float32", False),) + BASE[1:],  # a name
        (TensorSpec("a", (6, 4), "float32", False),) + BASE[1:],  # a shape, same size
        (TensorSpec("a", (4, 6), "float16", False),) + BASE[1:],  # a dtype
        BASE[:2] + (TensorSpec("m", (6,), "float32", False),),  # buffer -> parameter
        (BASE[1], BASE[0], BASE[2]),  # declaration order
    ],
)
def test_digest_changes_with_the_model(changed: tuple[TensorSpec, ...]) -> None:
    assert digest(changed) != digest()


def test_digest_changes_with_blocks_and_servers_only() -> None:
    assert digest(blocks=5) != digest()
    assert digest(servers=3) != digest()
    assert digest() == digest()
    same = tuple(TensorSpec(t.name, tuple(list(t.shape)), str(t.dtype), t.is_buffer) for t in BASE)
    assert digest(same) == digest()
    assert len(digest()) == 16


# -- errors --------------------------------------------------------------------------------------------


def test_fewer_blocks_than_servers_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"blocks=2 must be between servers=3"):
        build_layout(specs(100), 2, 3)


def test_more_blocks_than_elements_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"blocks=11 .*number of elements 10"):
        build_layout(specs(10), 11, 2)


def test_blocks_that_would_leave_an_empty_one_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"blocks=4 leaves empty blocks for 9 elements"):
        build_layout(specs(9), 4, 2)


def test_no_servers_or_no_elements_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"num_servers"):
        build_layout(specs(10), 2, 0)
    with pytest.raises(ValueError, match=r"no floating-point parameters"):
        build_layout((), 1, 1)


# -- default number of blocks --------------------------------------------------------------------------


def test_resolve_num_blocks() -> None:
    assert resolve_num_blocks(7, 1000, 2) == 7  # explicit wins
    assert resolve_num_blocks(None, 1000, 2) == 4  # at least two per server
    assert resolve_num_blocks(None, 10_000_000, 2) == math.ceil(40_000_000 / (4 << 20))  # ~4 MiB blocks
    assert resolve_num_blocks(None, 3, 4) == 3  # never more than elements


def test_default_number_of_blocks_always_builds() -> None:
    model_layout(nn.Linear(4, 2), 4, None)  # 10 elements, 4 servers: the default B must build
    for total in range(1, 300):
        for servers in range(1, min(total, 8) + 1):
            build_layout(specs(total), resolve_num_blocks(None, total, servers), servers)


def test_the_cutter_cuts_one_message_per_server_or_per_block() -> None:
    from weaksync.core.actions import PushRequest
    from weaksync.core.layout import MessageCutter

    owner = [0, 1, 0, 1, 2]
    pushes = [PushRequest(j, 0, 3) for j in (4, 0, 1, 2, 3)]
    coalesced = MessageCutter(owner, coalesce=True).messages(pushes)
    assert [(s, [p.block for p in items]) for s, items in coalesced] == [(0, [0, 2]), (1, [1, 3]), (2, [4])]
    single = MessageCutter(owner, coalesce=False).messages(pushes)
    assert [(s, [p.block for p in items]) for s, items in single] == [(2, [4]), (0, [0]), (1, [1]), (0, [2]), (1, [3])]
    assert MessageCutter(owner, coalesce=True).messages([]) == []


CUTS = (  # a block's server, every block's size, the byte cap of a message, coalesced or not
    st.lists(st.integers(0, 3), min_size=1, max_size=20),
    st.lists(st.integers(1, 10), min_size=20, max_size=20),
    st.integers(1, 30),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(*CUTS)
def test_messages_carry_every_item_once_in_order_within_the_byte_cap(
    owner: list[int], sizes: list[int], cap: int, coalesce: bool
) -> None:
    """Whatever the blocks' sizes: each item travels once, to its own server, in its order; a message passes
    the cap only when it carries a single block."""
    from weaksync.core.actions import PullRequest
    from weaksync.core.layout import MessageCutter

    items = [PullRequest(j, -1, 0) for j in range(len(owner))]
    messages = MessageCutter(owner, coalesce, sizes, max_bytes=cap).messages(items)
    assert sorted(i.block for _, part in messages for i in part) == list(range(len(owner)))
    for server, part in messages:
        assert part and all(owner[i.block] == server for i in part)
        assert [i.block for i in part] == sorted(i.block for i in part)
        assert len(part) == 1 or sum(sizes[i.block] for i in part) <= cap
        assert coalesce or len(part) == 1
    if coalesce:  # as few messages as the cap allows: no two neighbours that would have fit together
        for (s1, a), (s2, b) in zip(messages, messages[1:]):
            assert s1 != s2 or sum(sizes[i.block] for i in a) + sizes[b[0].block] > cap


@settings(max_examples=200, deadline=None)
@given(*CUTS, st.data())
def test_a_step_s_columns_are_cut_as_its_requests_one_by_one(
    owner: list[int], sizes: list[int], cap: int, coalesce: bool, data
) -> None:
    """Pushes and Pulls (a worker step's requests as columns) travel in the same messages, with the same
    values, as the same requests made one by one; each cut's bytes are its blocks' sizes, and a cut asked
    again (from its cache) is the same."""
    from weaksync.core.actions import PullRequest, Pulls, Pushes, PushRequest
    from weaksync.core.layout import MessageCutter

    blocks = data.draw(st.permutations(range(len(owner))))
    values = data.draw(st.lists(st.integers(-1, 50), min_size=len(owner), max_size=len(owner)))
    cutter = MessageCutter(owner, coalesce, sizes, max_bytes=cap)
    for columns, one_by_one in (
        (Pushes(blocks, values, 7), [PushRequest(j, v, 7) for j, v in zip(blocks, values)]),
        (Pulls(blocks, values, 3), [PullRequest(j, v, 3) for j, v in zip(blocks, values)]),
    ):
        assert columns == one_by_one
        by_columns, by_items = cutter.messages(columns), cutter.messages(one_by_one)
        assert [(s, list(part)) for s, part in by_columns] == [(s, part) for s, part in by_items]
        assert all(type(part) is type(columns) for _, part in by_columns)
    cuts = cutter.cut(blocks)
    assert [c.nbytes for c in cuts] == [sum(sizes[j] for j in c.blocks) for c in cuts]
    assert [c.blocks for c in cuts] == [tuple(blocks[i] for i in c.positions) for c in cuts]
    assert [c.pick(values) for c in cuts] == [tuple(values[i] for i in c.positions) for c in cuts]  # slice or not
    assert cutter.cut(tuple(blocks)) == cuts


def test_request_columns_read_as_requests_and_refuse_ragged_columns() -> None:
    from weaksync.core.actions import PullRequest, Pulls, Pushes, PushRequest
    from weaksync.core.layout import MessageCutter

    pushes = Pushes((0, 1, 2), (5, 6, 7), 3)
    assert (pushes.bases, pushes.step, len(pushes)) == ((5, 6, 7), 3, 3)
    assert pushes[1] == PushRequest(1, 6, 3) and pushes[1:] == [PushRequest(1, 6, 3), PushRequest(2, 7, 3)]
    assert pushes != Pulls((0, 1, 2), (5, 6, 7), 3) and pushes != Pushes((0, 1, 2), (5, 6, 7), 4)
    assert Pulls([], [], 0) == [] and "PullRequest(block=4, want_gt=-1, clock=2)" in repr(Pulls([4], [-1], 2))
    with pytest.raises(ValueError, match="3 blocks but 2 values"):
        Pushes((0, 1, 2), (5, 6), 3)
    cutter = MessageCutter([0, 1], coalesce=True)
    for k in range(MessageCutter.CACHED + 5):  # a bounded cache: new block sets past it start it afresh
        cutter.cut((k % 2,) * (k + 1))
    assert len(cutter._cuts) <= MessageCutter.CACHED
    assert cutter.messages(Pulls((1, 0), (2, 3), 9)) == [(0, [PullRequest(0, 3, 9)]), (1, [PullRequest(1, 2, 9)])]
