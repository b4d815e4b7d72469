"""`weaksync cluster`: hosts as network namespaces on one machine, rate-limited links, a real run on them.

Needs root and `ip netns` (skipped otherwise). Traffic stays inside namespaces the tests create.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weaksync.testbed.netcluster import NetCluster, NetClusterError, cleanup_stale, list_namespaces

pytestmark = pytest.mark.e2e
PY = sys.executable


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and tc (run the tests as root to include them)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (`ip` and `tc`)"
    try:
        with NetCluster(1, handle_signals=False):
            pass
    except NetClusterError as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


_reason = _netns_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


def ours(name: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"{name}-")]


# A TCP echo and a bounded throughput probe, run inside host namespaces with `ip netns exec`.
ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(20); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20); c.sendall(c.recv(1024)); c.close()
"""
ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20); c.sendall(b"hello weaksync")
print(c.recv(1024).decode())
"""
SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(20); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20); left = int(sys.argv[3])
while left > 0:
    chunk = c.recv(1 << 16)
    if not chunk: break
    left -= len(chunk)
c.sendall(b"k"); c.close()
"""
SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20); data = b"x" * int(sys.argv[3])
t0 = time.perf_counter(); c.sendall(data); assert c.recv(1) == b"k"; print(time.perf_counter() - t0)
"""


def serve(net: NetCluster, host: int, script: str, *args: object) -> subprocess.Popen:
    proc = net.popen(host, [PY, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    return proc


def throughput(net: NetCluster, sender: int, receiver: int, nbytes: int, port: int) -> float:
    """Bits per second of one TCP transfer from host `sender` to host `receiver` (bounded: 20 s)."""
    sink = serve(net, receiver, SINK, net.ip(receiver), port, nbytes)
    out = subprocess.run(net.exec_argv(sender, [PY, "-c", SOURCE, net.ip(receiver), port, nbytes]),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    sink.wait(10)
    return nbytes * 8 / float(out.stdout)


def test_hosts_talk_over_the_bridge_and_everything_is_removed() -> None:
    with NetCluster(3) as net:
        name = net.name
        assert sorted(ours(name)) == sorted([f"{name}-sw", f"{name}-h0", f"{name}-h1", f"{name}-h2"])
        assert [net.ip(h) for h in range(3)] == [f"10.213.{net.subnet}.{h}" for h in (1, 2, 3)]
        assert net.exec_argv(2, ["true"]) == ["ip", "netns", "exec", f"{name}-h2", "true"]
        echo = serve(net, 0, ECHO_SERVER, net.ip(0), 5001)
        reply = subprocess.run(net.exec_argv(2, [PY, "-c", ECHO_CLIENT, net.ip(0), 5001]),
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert reply.stdout.strip() == "hello weaksync", reply.stderr
        echo.wait(10)
        sleeper = net.popen(1, ["sleep", "60"])  # a process still running when the cluster goes
    assert ours(name) == []
    assert sleeper.poll() is not None

    with pytest.raises(RuntimeError, match="boom"):
        with NetCluster(2) as net:
            name = net.name
            sleeper = net.popen(1, ["sleep", "60"])
            raise RuntimeError("boom")
    assert ours(name) == [] and sleeper.poll() is not None


def test_sigterm_cleans_up_then_reaches_the_previous_handler() -> None:
    class Stopped(Exception):
        pass

    def previous(signum: int, frame: object) -> None:
        raise Stopped

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Stopped):
            with NetCluster(2) as outer, NetCluster(2) as inner:  # the inner one hands the signal to the outer
                names = [outer.name, inner.name]
                sleeper = inner.popen(1, ["sleep", "60"])
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # the handlers run here
        assert ours(names[0]) == ours(names[1]) == [] and sleeper.poll() is not None
        assert signal.getsignal(signal.SIGTERM) is previous  # the clusters' handlers are gone again
    finally:
        signal.signal(signal.SIGTERM, old)


def test_cleanup_stale_removes_only_dead_clusters_of_the_pattern() -> None:
    # a cluster whose process was SIGKILLed: no handler, no atexit ran
    script = (
        "import time\n"
        "from weaksync.testbed.netcluster import NetCluster\n"
        "net = NetCluster(2, prefix='wst').start(); print(net.name, flush=True); time.sleep(60)\n"
    )
    crashed = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    dead = crashed.stdout.readline().strip()  # type: ignore[union-attr]
    crashed.kill()
    crashed.wait(10)
    assert len(ours(dead)) == 3
    lookalikes = [f"{dead}0-sw", f"{dead}-x", "wstxyzw-h0"]  # not the pattern: must survive
    for ns in lookalikes:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with NetCluster(1, prefix="wst") as live:  # a live owner: kept
            removed = cleanup_stale(prefix="wst")
            assert sorted(removed) == sorted([f"{dead}-sw", f"{dead}-h0", f"{dead}-h1"])
            assert len(ours(live.name)) == 2
            assert all(ns in list_namespaces() for ns in lookalikes)
    finally:
        for ns in lookalikes:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_tbf_limits_both_directions_and_can_change_live() -> None:
    with NetCluster(2) as net:
        free = throughput(net, 1, 0, 2_000_000, 5002)
        net.limit(1, "8mbit")
        up = throughput(net, 1, 0, 2_000_000, 5003)  # host 1 -> host 0: the host end's qdisc
        down = throughput(net, 0, 1, 1_000_000, 5004)  # host 0 -> host 1: the switch end's qdisc
        net.limit(1, "none")
        lifted = throughput(net, 1, 0, 2_000_000, 5005)
        print(f"unlimited {free / 1e6:.0f} Mbit/s, 8mbit: up {up / 1e6:.2f} down {down / 1e6:.2f}, "
              f"lifted {lifted / 1e6:.0f} Mbit/s")  # fmt: skip
    assert free >= 3 * up and lifted >= 3 * up
    assert 0.5 * 8e6 <= up <= 1.15 * 8e6
    assert 0.5 * 8e6 <= down <= 1.15 * 8e6


def _cluster_cli(*args: str) -> subprocess.Popen:
    """`weaksync cluster ...` when the main app has it, else the module's own entry point."""
    from weaksync.cli.main import app

    registered = any(c.name == "cluster" for c in app.registered_commands)
    entry = ["-m", "weaksync", "cluster"] if registered else ["-m", "weaksync.cli.cluster"]
    return subprocess.Popen([PY, *entry, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def test_training_with_a_slow_link(tmp_path: Path) -> None:
    """Worker 1's link at a tenth of the others' rate: the run still reaches its accuracy, every worker
    finishes, and worker 1 is the slow one."""
    proc = _cluster_cli("--workers", "2", "--servers", "1", "--steps", "150", "--set", "train.eval_interval=0.5",
                        "--rate", "500mbit", "--limit", "2=50mbit", "--out-dir", str(tmp_path),
                        "--name", "nc")  # fmt: skip
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    run_dir = tmp_path / "nc"
    summary = json.loads((run_dir / "summary.json").read_text())
    topology = json.loads((run_dir / "cluster" / "cluster.json").read_text())
    rates = {w: s["steps_per_s"] for w, s in summary["workers"].items()}
    print(out, f"steps/s {rates}, accuracy {summary['final_accuracy']}", sep="\n")
    assert summary["worker_status"] == {"0": "done", "1": "done"}
    assert summary["final_accuracy"] >= 0.85
    assert rates["1"] < 0.8 * rates["0"]
    assert [h["limit"] for h in topology["hosts"]] == ["500mbit", "500mbit", "50mbit"]
    assert str(run_dir) in out and "50mbit" in out
    assert ours(topology["name"]) == []


def test_a_failed_host_stops_the_others_and_is_named(tmp_path: Path) -> None:
    from weaksync.config import load_config
    from weaksync.runtime.launcher import RunFailed
    from weaksync.testbed.netcluster import run_training

    fake = tmp_path / "python"  # worker 1's launch dies after 4 s, when the others run; they are real
    fake.write_text(f'#!/bin/sh\ncase "$*" in *"--first-id 1 "*) sleep 4; echo "simulated failure on this host" >&2; '
                    f'exit 3;; esac\nexec {PY} "$@"\n')  # fmt: skip
    fake.chmod(0o755)
    config = load_config(None, {"cluster.workers": 2, "cluster.servers": 1, "run.out_dir": str(tmp_path)})
    started = time.monotonic()
    with NetCluster(3) as net:
        name = net.name
        with pytest.raises(RunFailed, match=r"host 2 \(worker 1\) failed \(exit code 3\): simulated failure"):
            run_training(net, config, run_id="fail", python=str(fake))
        launches = json.loads((tmp_path / "fail" / "cluster" / "cluster.json").read_text())["launches"]
        assert all(x["exit_code"] is not None for x in launches)  # the server and worker 0 were stopped
        assert _processes_in(_net_inodes(ours(name))) == []
    assert ours(name) == [] and time.monotonic() - started < 30


def _net_inodes(names: list[str]) -> set[str]:
    return {f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]" for ns in names}


def _processes_in(inodes: set[str]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") in inodes:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_stops_every_process_and_removes_the_cluster(tmp_path: Path) -> None:
    proc = _cluster_cli("--workers", "2", "--servers", "1", "--steps", "100000", "--out-dir", str(tmp_path),
                        "--name", "cc", "--quiet")  # fmt: skip
    topology = tmp_path / "cc" / "cluster" / "cluster.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (topology.exists() and _started(topology)):
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    name = json.loads(topology.read_text())["name"]
    inodes = _net_inodes(ours(name))
    time.sleep(3)  # the launches are importing torch / starting their processes
    assert _processes_in(inodes)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the CLI's group (launches have their own)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (1, 130) and "interrupted" in err, err[-2000:]
    assert ours(name) == []
    assert _processes_in(inodes) == []


def _started(path: Path) -> bool:
    try:
        return all(x.get("pid") for x in json.loads(path.read_text())["launches"])
    except (json.JSONDecodeError, KeyError):
        return False
