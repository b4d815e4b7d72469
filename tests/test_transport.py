"""Wire format: round trips over real ZeroMQ sockets, and every malformed message is a BadMessage."""

from __future__ import annotations

import msgpack
import pytest
import torch
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from weaksync.transport.messages import BadMessage, decode, encode, payload_problem
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


def test_push_round_trip_over_zmq(pair) -> None:
    router, dealer = pair
    grad = torch.randn(1000)
    dealer.send_multipart(encode("push", grad, w=0, j=3, base=7, step=9), copy=False)
    frames = router.recv_multipart(copy=False)
    assert frames[0].bytes == b"w0"
    msg = decode(frames[1:])
    assert (msg.kind, msg["w"], msg["j"], msg["base"], msg["step"]) == ("push", 0, 3, 7, 9)
    torch.testing.assert_close(msg.payload, grad)


def test_reply_routes_back_by_identity(pair) -> None:
    router, dealer = pair
    dealer.send_multipart(encode("pull", w=0, j=1, want=-1, clock=0))
    identity = router.recv_multipart()[0]
    block = torch.arange(10, dtype=torch.float32)
    router.send_multipart([identity, *encode("block", block, j=1, v=4)], copy=False)
    msg = decode(dealer.recv_multipart(copy=False))
    assert msg["v"] == 4 and torch.equal(msg.payload, block)


def test_unroutable_reply_raises_instead_of_vanishing(pair) -> None:
    router, _ = pair
    with pytest.raises(zmq.ZMQError):
        router.send_multipart([b"nobody", *encode("stop")])


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "empty message"),
        ([b"\xc1\xc1"], "not msgpack"),
        ([msgpack.packb([1, 2])], "must be a map"),
        ([msgpack.packb({"k": "dance"})], "unknown message kind"),
        ([msgpack.packb({"k": "pull", "w": 0, "j": 1, "want": 0})], "needs field 'clock'"),
        ([msgpack.packb({"k": "pull", "w": "0", "j": 1, "want": 0, "clock": 0})], "needs field 'w'"),
        ([msgpack.packb({"k": "pull", "w": True, "j": 1, "want": 0, "clock": 0})], "needs field 'w'"),
        ([msgpack.packb({"k": "push", "w": 0, "j": 1, "base": 0, "step": 0})], "has 1 frames, expected 2"),
        ([msgpack.packb({"k": "push", "w": 0, "j": 1, "base": 0, "step": 0}), b"abc"], "not a whole number"),
        ([msgpack.packb({"k": "bye", "w": 0}), b"extra"], "has 2 frames, expected 1"),
        ([b"\x80" * 5000], "exceeds"),
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


def test_encode_refuses_payloads_it_cannot_send_without_copy() -> None:
    with pytest.raises(ValueError):
        encode("push", torch.zeros(4, dtype=torch.float64), w=0, j=0, base=0, step=0)
    with pytest.raises(ValueError):
        encode("push", torch.zeros(4, 4).t(), w=0, j=0, base=0, step=0)


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
            dealer.send_multipart(encode("push", torch.full((1 << 18,), float(i)), w=0, j=i, base=0, step=0))
        for i in range(40):
            assert router.poll(10_000), f"message {i} never arrived"
            identity, *frames = router.recv_multipart(copy=False)
            msg = decode(frames)
            assert msg["j"] == i and float(msg.payload[0]) == i
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()
