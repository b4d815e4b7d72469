"""Wire format: round trips over real ZeroMQ sockets, coalesced messages, and every malformed message is a
BadMessage."""

from __future__ import annotations

import msgpack
import pytest
import torch
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from weaksync.transport.messages import (
    KINDS,
    BadMessage,
    Blocks,
    Bye,
    Done,
    Heartbeat,
    Hello,
    Leave,
    Peek,
    Pull,
    Push,
    Refuse,
    Stop,
    Welcome,
    decode,
    encode,
    payload_problem,
)
from weaksync.transport.sockets import bind_router, connect_dealer


@pytest.fixture()
def pair():
    ctx = zmq.Context()
    router, endpoint = bind_router(ctx, "127.0.0.1")
    dealer = connect_dealer(ctx, endpoint, b"w0")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def test_coalesced_push_round_trip_over_zmq(pair) -> None:
    """One message carries several blocks: a header with their columns and one payload frame holding them all."""
    router, dealer = pair
    grads = (torch.randn(1000), torch.randn(3), torch.randn(70_000))
    push = Push(worker=0, step=9, blocks=(3, 5, 1), bases=(7, 6, 7), grads=grads, sent_at=1.5)
    dealer.send_multipart(encode(push), copy=False)
    frames = router.recv_multipart(copy=False)
    assert frames[0].bytes == b"w0" and len(frames) == 1 + 1 + 1
    msg = decode(frames[1:])
    assert isinstance(msg, Push)
    assert (msg.worker, msg.step, msg.blocks, msg.bases, msg.sent_at) == (0, 9, (3, 5, 1), (7, 6, 7), 1.5)
    for mine, theirs in zip(grads, msg.grads):
        torch.testing.assert_close(theirs, mine)


def test_reply_routes_back_by_identity(pair) -> None:
    router, dealer = pair
    dealer.send_multipart(encode(Pull(worker=0, clock=0, blocks=(1, 2), wants=(-1, -1))))
    identity = router.recv_multipart()[0]
    one, two = torch.arange(10, dtype=torch.float32), torch.ones(4)
    router.send_multipart([identity, *encode(Blocks(blocks=(1, 2), versions=(4, 0), values=(one, two)))], copy=False)
    msg = decode(dealer.recv_multipart(copy=False))
    assert isinstance(msg, Blocks) and msg.versions == (4, 0)
    assert torch.equal(msg.values[0], one) and torch.equal(msg.values[1], two)


EVERY_KIND = [
    Hello(worker=2, digest="ab" * 8, pid=4242),
    Welcome(server=1, digest="ab" * 8),
    Welcome(server=1, digest="ab" * 8, clock=17),
    Refuse(reason="layout mismatch"),
    Push(worker=1, step=4, blocks=(2,), bases=(3,), grads=(torch.randn(7),)),
    Push(worker=1, step=4, blocks=(2, 0), bases=(3, 3), grads=(torch.randn(7), torch.randn(2)), sent_at=12.5),
    Pull(worker=1, clock=5, blocks=(2, 4), wants=(-1, 8)),
    Blocks(blocks=(2,), versions=(9,), values=(torch.randn(3),)),
    Bye(worker=3),
    Heartbeat(worker=3),
    Peek(blocks=(0, 2)),
    Leave(worker=3),
    Leave(worker=3, pid=77),
    Stop(),
    Done(),
]


def test_every_kind_round_trips_with_its_types() -> None:
    assert {type(m).KIND for m in EVERY_KIND} == set(KINDS)
    for msg in EVERY_KIND:
        back = decode([bytes(f) for f in encode(msg)])
        assert type(back) is type(msg)
        for name in KINDS[msg.KIND].cls.__dataclass_fields__:
            mine, theirs = getattr(msg, name), getattr(back, name)
            if isinstance(mine, tuple) and mine and isinstance(mine[0], torch.Tensor):
                assert len(mine) == len(theirs) and all(map(torch.equal, mine, theirs))
            else:
                assert mine == theirs and type(mine) is type(theirs)


def test_the_header_uses_short_names_and_lists_the_blocks() -> None:
    push = Push(worker=1, step=4, blocks=(2, 5), bases=(3, 1), grads=(torch.zeros(1), torch.zeros(1)), sent_at=0.5)
    header = msgpack.unpackb(encode(push)[0])
    assert header == {"k": "push", "w": 1, "step": 4, "j": [2, 5], "u": [3, 1], "ts": 0.5, "n": [1, 1]}
    assert msgpack.unpackb(encode(Leave(worker=3))[0]) == {"k": "leave", "w": 3}  # absent optionals stay off


def test_unroutable_reply_raises_instead_of_vanishing(pair) -> None:
    router, _ = pair
    with pytest.raises(zmq.ZMQError):
        router.send_multipart([b"nobody", *encode(Stop())])


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "empty message"),
        ([b"\xc1\xc1"], "not msgpack"),
        ([msgpack.packb([1, 2])], "must be a map"),
        ([msgpack.packb({"k": "dance"})], "unknown message kind"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": [1], "wants": [0]})], "needs field 'clock'"),
        ([msgpack.packb({"k": "pull", "w": "0", "j": [1], "wants": [0], "clock": 0})], "needs field 'w'"),
        ([msgpack.packb({"k": "pull", "w": True, "j": [1], "wants": [0], "clock": 0})], "needs field 'w'"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": 1, "wants": [0], "clock": 0})], "'j' as a list of int"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": [1, "2"], "wants": [0, 0], "clock": 0})], "a list of int"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": [1, 2], "wants": [0], "clock": 0})], "unequal length"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": [], "wants": [], "clock": 0})], "carries no blocks"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0})], "has 1 frames, expected 2"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0}), b"", b""], "3 frames, expected 2"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1, 2], "u": [0, 0], "step": 0}), b""], "needs field 'n'"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1, 2], "u": [0, 0], "step": 0, "n": [1]}), b""], "2 value counts"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0, "n": [-1]}), b""], "counts >= 0"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0, "n": [1]}), b"abc"], "not a whole number"),
        (
            [msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0, "n": [2]}), bytes(4)],
            "its header lists 2",
        ),
        ([msgpack.packb({"k": "bye", "w": 0}), b"extra"], "has 2 frames, expected 1"),
        ([msgpack.packb({"k": "welcome", "s": 0, "digest": "x", "clock": 1.5})], "needs field 'clock'"),
        ([msgpack.packb({"k": "leave", "w": 0, "pid": "1"})], "needs field 'pid'"),
        ([msgpack.packb({"k": "push", "w": 0, "j": [1], "u": [0], "step": 0, "ts": "now", "n": [0]}), b""], "'ts'"),
        ([b"\x80" * 70_000], "exceeds"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=3))
def test_random_bytes_never_crash_the_decoder(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except BadMessage:
        pass


def test_payload_checks() -> None:
    assert payload_problem(torch.zeros(4), 4) is None
    assert "block needs 5" in payload_problem(torch.zeros(4), 5)
    assert "non-finite" in payload_problem(torch.tensor([0.0, float("nan")]), 2)
    assert "non-finite" in payload_problem(torch.tensor([float("inf")]), 1)
    assert payload_problem(None, 1) == "missing payload"
    assert payload_problem(torch.tensor([3e38, 3e38]), 2) is None  # the sum overflows; every value is finite
    assert "non-finite" in payload_problem(torch.tensor([3e38, float("-inf")]), 2)


def test_encode_refuses_payloads_that_are_not_1d_float32_and_joins_strided_ones() -> None:
    with pytest.raises(ValueError):
        encode(Push(0, 0, (0,), (0,), grads=(torch.zeros(4, dtype=torch.float64),)))
    with pytest.raises(ValueError):
        encode(Push(0, 0, (0, 1), (0, 0), grads=(torch.zeros(4), torch.zeros(4, 4).t())))
    strided = torch.arange(8, dtype=torch.float32)[::2]  # copied into the one payload frame as it is joined
    back = decode([bytes(f) for f in encode(Push(0, 0, (0, 1), (0, 0), grads=(strided, torch.ones(2))))])
    assert isinstance(back, Push) and torch.equal(back.grads[0], strided) and torch.equal(back.grads[1], torch.ones(2))
    alone = decode([bytes(f) for f in encode(Push(0, 0, (0,), (0,), grads=(strided,)))])
    assert isinstance(alone, Push) and torch.equal(alone.grads[0], strided)


def test_a_full_inbox_holds_messages_back_without_dropping_any() -> None:
    """A server's receive limit (one 1 MiB message per peer here) delays senders; every message still arrives
    in order."""
    from weaksync.transport.sockets import inbox_hwm

    assert inbox_hwm(1 << 20) == 4 and inbox_hwm(64 << 20) == 1 and inbox_hwm(100) == 1000
    ctx = zmq.Context()
    router, endpoint = bind_router(ctx, "127.0.0.1", rcvhwm=1)
    dealer = connect_dealer(ctx, endpoint, b"w0")
    try:
        assert router.getsockopt(zmq.RCVHWM) == 1
        for i in range(40):
            dealer.send_multipart(encode(Push(0, 0, (i,), (0,), grads=(torch.full((1 << 18,), float(i)),))))
        for i in range(40):
            assert router.poll(10_000), f"message {i} never arrived"
            identity, *frames = router.recv_multipart(copy=False)
            msg = decode(frames)
            assert msg.blocks == (i,) and float(msg.grads[0][0]) == i
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()
