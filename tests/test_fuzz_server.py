"""Fuzz of a server's message handling (4,000 cases, each through the wire decoder first) and of the decoder
alone: whatever arrives, from whichever routing id, is either a valid message of its sender's principal or
a counted rejection; a rejection changes nothing, and nothing crashes the server."""

from __future__ import annotations

import msgpack
import pytest
import torch
import zmq
from conftest import small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weaksync.runtime.server import Server, principal_from_routing_id
from weaksync.runtime.spec import RoleSpec
from weaksync.training.workload import builtin_workload
from weaksync.transport.messages import KINDS, PAYLOAD_SIZES, BadMessage, decode
from weaksync.transport.security import worker_principal

CASES = 4_000  # a fresh draw each run: over many CI runs the fuzz covers far more than one run's cases


class Frame:
    """What recv_multipart(copy=False) hands the server, without a socket."""

    def __init__(self, data: bytes):
        self.bytes = data
        self.buffer = memoryview(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = small_config(tmp, **{"cluster.servers": 1, "cluster.workers": 2, "sync.mode": "bsp", "security.curve": False})
    workload = builtin_workload("digits-cnn", "digits", None, 0, 100)
    spec = RoleSpec("server", 0, cfg, workload, "127.0.0.1", 0, "fuzz", str(tmp))
    server = Server(spec, workload.model_fn())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # replies go nowhere and raise, as to a vanished peer
    sock.setsockopt(zmq.LINGER, 0)
    yield server, sock
    sock.close(0)
    ctx.term()


values = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.integers(-3, 5), st.text(max_size=20), st.floats(), st.booleans(),
    st.none(), st.binary(max_size=8), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)  # fmt: skip


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """Mostly well-formed headers of real kinds with fuzzed field values, some with fields missing or extra."""
    kind = draw(st.sampled_from([*KINDS, "dance", ""]))
    spec = KINDS.get(kind)
    fields = {}
    for f in spec.fields if spec else ():
        if draw(st.integers(0, 9)):  # 1 in 10: the field is missing
            fields[f.key] = draw(values)
    if spec and spec.payload and draw(st.integers(0, 9)):  # the payload's value counts, fitting it or not
        fields[PAYLOAD_SIZES] = draw(st.one_of(st.lists(st.integers(0, 64), max_size=3), values))
    if draw(st.booleans()):
        fields[draw(st.text(max_size=5))] = draw(values)
    return msgpack.packb({"k": kind, **fields})


identities = st.one_of(
    st.sampled_from([b"w0", b"w1", b"w0.hb", b"w9", b"evaluator", b"launcher", b""]), st.binary(max_size=6)
)
payloads = st.one_of(st.binary(max_size=64), st.builds(lambda n: torch.randn(n).numpy().tobytes(), st.integers(0, 64)))
messages = st.tuples(identities, st.one_of(headers(), st.binary(max_size=64)), st.lists(payloads, max_size=2))


def state(server: Server) -> tuple:
    return (
        {j: server.core.version(j) for j in server.blockstore.blocks},
        dict(server.core.clocks),
        server.core.updates,
        sorted(server.core.members.registered),
        server.stop_requested,
    )


@settings(
    max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(messages)
def test_every_input_is_a_message_or_a_counted_rejection(server, message) -> None:
    srv, sock = server
    identity, header, extra = message
    frames = [Frame(identity), Frame(header), *(Frame(p) for p in extra)]
    before, rejected = state(srv), sum(srv.bad_messages.values())
    try:
        msg = decode([f.bytes for f in frames[1:]])
    except BadMessage:
        msg = None
    srv.handle(sock, frames)  # must not raise
    counted = sum(srv.bad_messages.values()) - rejected
    if msg is None:
        assert counted == 1 and state(srv) == before, "a malformed message was not counted, or changed state"
        return
    worker = getattr(msg, "worker", None)
    principal = principal_from_routing_id(identity)
    if worker is not None and msg.KIND != "leave" and principal != worker_principal(worker):
        assert counted == 1 and state(srv) == before, "a message claiming another worker was not refused"
    srv.stop_requested = False  # a legitimate stop from the launcher: serve on for the next case


@settings(max_examples=CASES // 5, deadline=None)  # the server's fuzz above decodes its inputs as well
@given(st.lists(st.one_of(headers(), st.binary(max_size=64)), min_size=0, max_size=3))
def test_the_decoder_returns_a_typed_message_or_raises_bad_message(frames: list[bytes]) -> None:
    try:
        msg = decode(frames)
    except BadMessage:
        return
    assert type(msg) is KINDS[msg.KIND].cls
    rows = set()
    for f in KINDS[msg.KIND].fields:
        value = getattr(msg, f.name)
        if f.column:  # a column: one typed entry per block carried, as many as every other column
            assert isinstance(value, tuple) and value and all(type(v) in f.types for v in value)
            rows.add(len(value))
            continue
        assert (value is None and not f.required) or (isinstance(value, f.types) and not isinstance(value, bool))
    assert len(rows) <= 1
    payload = KINDS[msg.KIND].payload
    if payload is not None:
        assert len(getattr(msg, payload)) == rows.pop() and len(frames) == 2  # one frame holds every block
