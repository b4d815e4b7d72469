"""The authenticated data plane: CURVE on every socket, and a peer acts only as the principal its key was
issued for. A real run is attacked while it trains, by a peer without CURVE, one with a key of no
principal, and an insider holding worker 1's key posing as the launcher, the evaluator and worker 0: every
attempt is refused and counted, and the run ends as if nobody had tried."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
import zmq
from conftest import events, small_config

from weaksync.runtime.launcher import run_local
from weaksync.transport import security
from weaksync.transport.messages import Hello, Peek, Pull, Push, Stop, encode
from weaksync.transport.security import RoleKeys, RunKeys, load_role_keys
from weaksync.transport.sockets import connect_dealer

pytestmark = pytest.mark.e2e


def _server_endpoint(run_dir: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        for e in events(run_dir, "server-0"):
            if e["ev"] == "start":
                return e["endpoint"]
        time.sleep(0.05)
    raise AssertionError("server 0 never started")


def _attack(run_dir: Path, keys: RunKeys, replies: list[str]) -> None:
    """Every way in a peer might try; record any reply it got."""
    endpoint = _server_endpoint(run_dir, time.monotonic() + 60)
    real = keys.for_principal("worker-1")
    stranger = RoleKeys("nobody", *zmq.curve_keypair(), server_public=real.server_public)
    ctx = zmq.Context()
    grad = torch.zeros(16)
    attempts = [
        # (routing id, keys, message): without CURVE, with an unknown key, and as an insider
        *[(name, None, m) for name, m in ((b"launcher", Stop()), (b"evaluator", Peek((0,))), (b"w0", Pull(0, 0, (0,), (-1,))))],
        *[(name, stranger, m) for name, m in ((b"launcher", Stop()), (b"evaluator", Peek((0,))))],
        (b"launcher", real, Stop()),  # worker 1 posing as the launcher
        (b"evaluator", real, Peek((0,))),  # ... as the evaluator: θ through the back door
        (b"x1", real, Push(0, 0, (0,), (0,), (grad,))),  # ... pushing as worker 0
        # ... registering as worker 0 (under a free name: once worker 0 is connected, ZeroMQ drops a second
        # connection named w0 before the server sees it, the last attempt below, so the claim would go uncounted)
        (b"x3", real, Hello(0, "0" * 16, pid=1)),
        (b"x2", real, Pull(0, 0, (0,), (-1,))),  # ... asking for worker 0's replies
        (b"w0", real, Pull(1, 0, (0,), (-1,))),  # a second connection under a name in use: refused by ZeroMQ
    ]
    socks = []
    for identity, keys_, msg in attempts:
        sock = connect_dealer(ctx, endpoint, identity, keys_)
        if keys_ is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)  # an attacker may name itself anything
            sock.disconnect(endpoint)
            sock.connect(endpoint)
        sock.send_multipart(encode(msg))
        socks.append((sock, msg))
    for sock, msg in socks:
        if sock.poll(1000):
            replies.append(f"{msg.KIND}: {sock.recv_multipart()[:1]}")
        sock.close(linger=0)
    ctx.term()


def test_impostors_are_refused_and_counted_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    keys = RunKeys.generate(4)
    monkeypatch.setattr(security.RunKeys, "generate", classmethod(lambda cls, workers: keys))
    cfg = small_config(tmp_path, **{"run.name": "attacked", "sync.mode": "bsp", "train.steps": 250})
    replies: list[str] = []
    attacker = threading.Thread(target=_attack, args=(tmp_path / "runs" / "attacked", keys, replies), daemon=True)
    attacker.start()
    result = run_local(cfg)
    attacker.join(30)
    assert replies == [], f"an impostor got answers: {replies}"
    s = result.summary
    assert s["worker_status"] == {str(w): "done" for w in range(4)} and s["final_accuracy"] >= 0.9
    server0 = json.loads((result.run_dir / "procs" / "server-0.json").read_text())
    refused = server0["refused_connections"]
    assert refused.get("no CURVE handshake", 0) >= 3 and refused.get("unknown key", 0) >= 2, refused
    bad = server0["bad_messages"]
    claims = sum(
        n for reason, n in bad.items() if reason.startswith(("'push' claims", "'hello' claims", "'pull' claims"))
    )
    unexpected = sum(n for reason, n in bad.items() if reason.startswith("unexpected"))
    assert claims >= 3 and unexpected >= 2, bad  # push/hello/pull as worker 0; stop and peek as others
    assert server0["versions"] and all(v > 0 for v in server0["versions"].values())


def test_keys_written_by_weaksync_keys_serve_each_role_and_only_it(tmp_path: Path) -> None:
    keys = RunKeys.generate(2)
    keys.write(tmp_path)
    server = load_role_keys(tmp_path, "server")
    assert sorted(server.clients.values()) == ["evaluator", "launcher", "worker-0", "worker-1"]
    worker = load_role_keys(tmp_path, "worker-1")
    assert (worker.public, worker.secret) == keys.clients["worker-1"] and worker.clients == {}
    assert (tmp_path / "worker-1.key_secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(security.KeysError, match="worker-2.key_secret' is missing"):
        load_role_keys(tmp_path, "worker-2")
    with pytest.raises(security.KeysError, match="no public/ folder"):
        load_role_keys(tmp_path / "public", "worker-0")


def test_weaksync_keys_writes_a_folder_once(tmp_path: Path) -> None:
    from weaksync.cli.main import keys as keys_command
    from weaksync.config import ConfigError

    keys_command(tmp_path / "k", workers=2)
    assert load_role_keys(tmp_path / "k", "worker-1").principal == "worker-1"
    with pytest.raises(ConfigError, match="holds keys already"):
        keys_command(tmp_path / "k", workers=2)
