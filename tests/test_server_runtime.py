"""The server process's message handling: bad network input is counted and logged, never fatal."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import torch
import zmq
from conftest import small_config

from weaksync.core.layout import MessageCutter
from weaksync.runtime.server import Server
from weaksync.runtime.spec import RoleSpec
from weaksync.training.workload import builtin_workload
from weaksync.transport.messages import Blocks, Hello, Peek, Pull, Push, Refuse, Stop, Welcome, decode, encode
from weaksync.transport.sockets import bind_router, connect_dealer


@pytest.fixture()
def served(tmp_path: Path):
    cfg = small_config(tmp_path, **{"cluster.servers": 1, "cluster.workers": 2, "sync.mode": "bsp"})
    workload = builtin_workload("digits-cnn", "digits", None, 0, 100)
    spec = RoleSpec("server", 0, cfg, workload, "127.0.0.1", 0, "test", str(tmp_path))
    server = Server(spec, workload.model_fn())
    ctx = zmq.Context()
    router, endpoint = bind_router(ctx, "127.0.0.1")
    dealers = {name: connect_dealer(ctx, endpoint, name) for name in (b"w0", b"w1", b"w9", b"evaluator")}

    def exchange(name: bytes, frames: list, expect_reply: bool = False):
        dealers[name].send_multipart(frames, copy=False)
        server.handle(router, router.recv_multipart(copy=False))
        if expect_reply:
            assert dealers[name].poll(2000), "no reply"
            return decode(dealers[name].recv_multipart(copy=False))
        assert not dealers[name].poll(50), "unexpected reply"
        return None

    for name, worker in ((b"w0", 0), (b"w1", 1)):
        assert isinstance(exchange(name, encode(Hello(worker, server.layout.digest, pid=1)), True), Welcome)
    exchange.dealers = dealers  # type: ignore[attr-defined]  # to read a reply on another peer's socket
    yield server, exchange
    for sock in (router, *dealers.values()):
        sock.close(0)
    ctx.term()


def test_registration_checks_the_layout(served) -> None:
    server, exchange = served
    refused = exchange(b"w0", encode(Hello(0, "0" * 16, pid=1)), expect_reply=True)
    assert isinstance(refused, Refuse) and "layout mismatch" in refused.reason
    welcome = exchange(b"w0", encode(Hello(0, server.layout.digest, pid=1)), expect_reply=True)
    assert isinstance(welcome, Welcome)
    out_of_range = exchange(b"w9", encode(Hello(9, server.layout.digest, pid=1)), expect_reply=True)
    assert isinstance(out_of_range, Refuse) and "outside 0..1" in out_of_range.reason


def test_bad_messages_are_counted_and_the_server_goes_on(served) -> None:
    server, exchange = served
    size = server.layout.blocks[0].size
    exchange(b"w9", encode(Pull(9, 0, (0,), (-1,))))  # not a worker of this run
    exchange(b"w0", [b"\xc1 not msgpack"])
    exchange(b"w0", [msgpack.packb({"k": "dance"})])
    exchange(b"w1", encode(Push(0, 0, (0,), (0,), (torch.zeros(size),))))  # claims another worker
    exchange(b"w0", encode(Push(0, 0, (0,), (0,), (torch.zeros(size + 1),))))  # wrong size
    exchange(b"w0", encode(Push(0, 0, (0,), (0,), (torch.full((size,), float("nan")),))))
    exchange(b"w0", encode(Push(0, 0, (0,), (5,), (torch.zeros(size),))))  # future version
    exchange(b"w0", encode(Push(0, 0, (99,), (0,), (torch.zeros(size),))))  # unknown block
    exchange(b"w0", encode(Stop()))  # only the launcher/evaluator may stop a server
    assert not server.stop_requested
    assert sum(server.bad_messages.values()) == 4
    assert server.core.drops == {"malformed": 2, "future": 1, "unknown-block": 1, "unknown-worker": 1}
    assert all(server.core.version(j) == 0 for j in server.blockstore.blocks)
    log = Path(server.spec.run_dir) / "events" / "server-0.jsonl"
    server.log.flush()
    assert log.read_text().count('"reject"') == 4


def test_bsp_round_updates_and_answers_parked_pulls(served) -> None:
    server, exchange = served
    block = server.layout.blocks[0]
    assert exchange(b"w0", encode(Pull(0, 0, (0,), (-1,))), expect_reply=True).versions == (0,)
    exchange(b"w0", encode(Pull(0, 1, (0,), (0,))))  # parked: nothing newer yet
    exchange(b"w0", encode(Push(0, 0, (0,), (0,), (torch.ones(block.size),))))
    before = server.blockstore.snapshot(0).clone()
    reply = exchange(b"w1", encode(Push(1, 0, (0,), (0,), (torch.ones(block.size),))))
    assert reply is None and server.core.version(0) == 1
    assert not torch.equal(server.blockstore.snapshot(0), before), "the optimizer did not step"
    # the parked pull of worker 0 was answered with version 1 on w0's socket
    peek = exchange(b"evaluator", encode(Peek((0,))), expect_reply=True)
    assert isinstance(peek, Blocks) and peek.versions == (1,)
    assert torch.equal(peek.values[0], server.blockstore.snapshot(0))


@pytest.mark.parametrize("coalesce", [True, False])
def test_one_push_message_per_step_and_one_reply_per_worker(served, coalesce: bool) -> None:
    """Coalesced, a worker's step is one push and one pull for all of a server's blocks, and the round they
    close answers each parked worker with one message; uncoalesced, every block is its own message."""
    server, exchange = served
    server.reply_cut = MessageCutter(server.layout.owners, coalesce, server.layout.block_bytes)  # as if so configured
    blocks = tuple(sorted(server.blockstore.blocks))
    n = len(blocks)
    assert n >= 2
    first = exchange(b"w0", encode(Pull(0, 0, blocks, (-1,) * n)), expect_reply=True)
    if coalesce:
        assert first.blocks == blocks and first.versions == (0,) * n  # every block in one reply
    else:
        assert first.blocks == blocks[:1]
        w0 = exchange.dealers[b"w0"]
        assert [decode(w0.recv_multipart()).blocks for _ in range(n - 1)] == [(j,) for j in blocks[1:]]
    exchange(b"w0", encode(Pull(0, 1, blocks, (0,) * n)))  # parked: nothing newer yet
    grads = tuple(torch.ones(server.layout.blocks[j].size) for j in blocks)
    exchange(b"w0", encode(Push(0, 0, blocks, (0,) * n, grads)))
    exchange(b"w1", encode(Push(1, 0, blocks, (0,) * n, grads)))
    assert all(server.core.version(j) == 1 for j in blocks) and server.push_msgs == 2
    w0 = exchange.dealers[b"w0"]
    replies = []
    while w0.poll(200):
        replies.append(decode(w0.recv_multipart(copy=False)))
    assert [r.blocks for r in replies] == ([blocks] if coalesce else [(j,) for j in blocks])
    assert all(v == 1 for r in replies for v in r.versions)
    for reply in replies:
        for j, values in zip(reply.blocks, reply.values):
            assert torch.equal(values, server.blockstore.snapshot(j))


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_peek_is_answered_as_the_wire_cuts_replies(served, coalesce: bool) -> None:
    """The evaluator asks for all of a server's blocks at once; the answer follows the same rule as a worker's
    replies (one message per block without coalescing), never one message whatever the size."""
    server, exchange = served
    server.reply_cut = MessageCutter(server.layout.owners, coalesce, server.layout.block_bytes)  # as if so configured
    blocks = tuple(sorted(server.blockstore.blocks))
    first = exchange(b"evaluator", encode(Peek(blocks)), expect_reply=True)
    evaluator = exchange.dealers[b"evaluator"]
    replies = [first]
    while evaluator.poll(200):
        replies.append(decode(evaluator.recv_multipart(copy=False)))
    assert [r.blocks for r in replies] == ([blocks] if coalesce else [(j,) for j in blocks])
