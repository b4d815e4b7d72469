"""Real slow links: a small cluster of hosts on this machine, one network namespace per host.

    with NetCluster(3) as net:          # namespaces ws<tag>-sw (a bridge) and ws<tag>-h0..h2
        net.limit(2, "10mbit")          # host 2's link, both directions (tbf on both veth ends)
        subprocess.run(net.exec_argv(1, ["python", "-c", "..."]))

Topology: one switch namespace holding a Linux bridge; each host namespace holds the host end of a veth
pair (`eth0`, address 10.213.<subnet>.<host + 1>/24) whose other end (`h<i>`) is a port of the bridge.
Traffic stays inside these namespaces: nothing is added to the root namespace (no address, no route).

Everything a cluster creates is removed again on `__exit__`, on an exception, on SIGINT / SIGTERM /
SIGHUP (the handlers clean up, then hand the signal on) and at interpreter exit; a crash that skips all
of these (SIGKILL) leaves namespaces that `cleanup_stale()` removes later. Processes started with
`popen()` run in their own session and are stopped with the cluster; any other process still inside one
of the cluster's namespaces (e.g. a torchrun agent's children) is killed before the namespaces go.

`run_training(net, config)` runs weaksync over such a cluster: host 0 runs the servers (and the
evaluator), hosts 1..N one worker each, as torchrun launches that meet at a TCPStore on host 0.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WeaksyncError
from ..runtime.supervisor import Supervisor

if TYPE_CHECKING:
    from ..config import Config

NEEDS_ROOT = (
    "weaksync cluster needs root for network namespaces: run it as root, "
    "or use `weaksync train` for a loopback-only run"
)
MARKER_DIR = Path("/run/weaksync/netcluster")  # one file per live cluster: "<pid> <start time>" of its owner
HOST_DEV = "eth0"  # host end of a host's veth pair, inside the host namespace
BRIDGE = "br0"
MAX_HOSTS = 200
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit|k|m|g|t)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "bit": 1, "k": 10**3, "kbit": 10**3, "m": 10**6, "mbit": 10**6, "g": 10**9, "gbit": 10**9,
         "t": 10**12, "tbit": 10**12}  # fmt: skip
_NO_LIMIT = ("none", "off", "unlimited")


class NetClusterError(WeaksyncError, RuntimeError):
    """The cluster cannot be built or used here; the message is one line saying why and what to do."""


def parse_rate(rate: str) -> int | None:
    """'10mbit' -> 10_000_000 bits/s (tc's decimal units: bit, kbit, mbit, gbit; k/m/g alone mean the same);
    'none' / 'off' / 'unlimited' -> None (no limit)."""
    text = str(rate).strip()
    if text.lower() in _NO_LIMIT:
        return None
    m = _RATE.match(text)
    if not m:
        raise ValueError(
            f"rate '{rate}' is not a link rate: write a number and a unit like 10mbit, 500kbit or 1gbit "
            f"(or 'none' for no limit)"
        )
    bits = float(m.group(1)) * _UNIT[(m.group(2) or "").lower()]
    if bits < 8000:
        raise ValueError(f"rate '{rate}' is below 8kbit: pick a rate of at least 8kbit")
    return int(bits)


def tbf_params(bits_per_s: int) -> dict[str, int]:
    """Token bucket for a rate: a burst of 5 ms of traffic but at least 32 KiB (several full-size and
    GSO packets, so small rates keep a smooth TCP flow instead of stalling), and a queue of 50 ms at the
    rate on top of the burst (enough for a TCP window at small rates; drops past it are congestion)."""
    bytes_per_s = bits_per_s / 8
    burst = max(32 * 1024, int(bytes_per_s * 0.005))
    limit = burst + max(16 * 1024, int(bytes_per_s * 0.05))
    return {"rate": bits_per_s, "burst": burst, "limit": limit}


def check_privileges() -> None:
    """Raise NetClusterError (one line) unless this process can create network namespaces."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise NetClusterError(NEEDS_ROOT)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise NetClusterError(f"`ip {' '.join(args)}` failed: {detail[-1] if detail else result.returncode}")
    return result


def list_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def _start_time(pid: int) -> str | None:
    """Kernel start time of a process (field 22 of /proc/<pid>/stat), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^({re.escape(prefix)}[0-9a-f]{{4}})-(sw|h[0-9]+)$")


def _owner_alive(cluster: str) -> bool:
    try:
        pid, start = (MARKER_DIR / cluster).read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid)) == start


def cleanup_stale(prefix: str = "ws", force: bool = False) -> list[str]:
    """Delete namespaces left by clusters whose process is gone (a SIGKILL, a crash, a power cut of the
    shell): only names matching exactly `<prefix><4 hex>-sw` / `<prefix><4 hex>-h<n>`. Clusters whose owner
    is still running are kept unless `force`. Processes inside a deleted namespace are killed first.
    Returns the deleted namespace names."""
    check_privileges()
    pattern = _pattern(prefix)
    removed = []
    for ns in list_namespaces():
        m = pattern.match(ns)
        if not m or (not force and _owner_alive(m.group(1))):
            continue
        _kill_pids(namespace_pids(ns))
        if _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    live = {m.group(1) for ns in list_namespaces() if (m := pattern.match(ns))}
    if MARKER_DIR.is_dir():
        for marker in MARKER_DIR.iterdir():
            if marker.name.startswith(prefix) and marker.name not in live:
                marker.unlink(missing_ok=True)
    return removed


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class NetCluster:
    """`hosts` namespaces joined by one bridge; see the module docstring. Use as a context manager
    (or call `start()` and `close()`); `close()` is idempotent."""

    def __init__(
        self,
        hosts: int,
        *,
        prefix: str = "ws",
        subnet: int | None = None,
        handle_signals: bool = True,
        grace: float = 5.0,
    ):
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"a cluster has 1..{MAX_HOSTS} hosts, not {hosts}")
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise ValueError(f"prefix '{prefix}' must be 1 to 4 lowercase letters (namespace names stay short)")
        if subnet is not None and not 1 <= subnet <= 254:
            raise ValueError(f"subnet {subnet} must be in 1..254 (addresses 10.213.<subnet>.0/24)")
        self.hosts = hosts
        self.prefix = prefix
        self.subnet = subnet
        self.handle_signals = handle_signals
        self.grace = grace
        self.name = ""  # <prefix><4 hex>, chosen at start()
        self.limits: dict[int, str] = {}
        self.limit_log: list[dict[str, Any]] = []  # every limit() call, with its time: evidence for a run
        self._created: list[str] = []
        self._processes = Supervisor(grace)
        self._started = False
        self._closed = False
        self._closing = False
        self._pending_signal: int | None = None
        self._previous: dict[int, Any] = {}  # handlers found at start(): a caught signal is handed on to them
        self._owner = os.getpid()
        self._lock = threading.RLock()

    # ----- names and addresses -----
    @property
    def switch(self) -> str:
        return f"{self.name}-sw"

    def ns(self, host: int) -> str:
        self._check_host(host)
        return f"{self.name}-h{host}"

    def ip(self, host: int) -> str:
        self._check_host(host)
        return f"10.213.{self.subnet}.{host + 1}"

    def port(self, host: int) -> str:
        """The bridge port (switch end of the veth pair) of a host, inside the switch namespace."""
        self._check_host(host)
        return f"h{host}"

    def namespaces(self) -> list[str]:
        return [self.switch, *(self.ns(h) for h in range(self.hosts))]

    def exec_argv(self, host: int, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside a host's namespace."""
        return ["ip", "netns", "exec", self.ns(host), *map(str, argv)]

    def _check_host(self, host: int) -> None:
        if not self._started:
            raise NetClusterError("the cluster is not started: use `with NetCluster(...) as net:`")
        if not (isinstance(host, int) and 0 <= host < self.hosts):
            raise ValueError(f"host {host} does not exist: this cluster has hosts 0..{self.hosts - 1}")

    # ----- life cycle -----
    def __enter__(self) -> NetCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NetCluster:
        if self._started:
            return self
        check_privileges()
        existing = set(list_namespaces())
        for _ in range(100):
            tag = f"{random.getrandbits(16):04x}"
            if not any(ns.startswith(f"{self.prefix}{tag}-") for ns in existing):
                break
        else:  # pragma: no cover - 65536 tags
            raise NetClusterError("no free cluster name: run `weaksync cluster --cleanup`")
        self.name = f"{self.prefix}{tag}"
        if self.subnet is None:
            self.subnet = int(tag, 16) % 254 + 1  # any subnet works (namespaces are isolated); vary it anyway
        self._started = True
        self._owner = os.getpid()
        atexit.register(self.close)
        self._install_signal_handlers()
        try:
            self._write_marker()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _write_marker(self) -> None:
        try:
            MARKER_DIR.mkdir(parents=True, exist_ok=True)
            (MARKER_DIR / self.name).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        except OSError:
            pass  # only cleanup_stale's "is the owner alive" check uses it

    def _add_ns(self, ns: str) -> None:
        self._created.append(ns)  # before `ip netns add`: a half-made namespace is still deleted
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        sw = self.switch
        self._add_ns(sw)
        _ip("-n", sw, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        for h in range(self.hosts):
            ns = self.ns(h)
            self._add_ns(ns)
            # both ends are created directly in their namespaces: nothing appears in the root namespace
            _ip("link", "add", HOST_DEV, "netns", ns, "type", "veth", "peer", "name", self.port(h), "netns", sw)
            _ip("-n", sw, "link", "set", self.port(h), "master", BRIDGE)
            _ip("-n", sw, "link", "set", self.port(h), "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(h)}/24", "dev", HOST_DEV)
            _ip("-n", ns, "link", "set", HOST_DEV, "up")

    def close(self) -> None:
        """Stop every process of the cluster and delete its namespaces (their veths go with them)."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
        if os.getpid() != self._owner:  # a forked child inherited this object: the cluster is not its to remove
            self._closed = True
            return
        try:
            self.stop_processes()
            for ns in reversed(self._created):
                _ip("netns", "del", ns, check=False)
            self._created.clear()
            if self.name:
                (MARKER_DIR / self.name).unlink(missing_ok=True)
        finally:
            self._closed = True
            atexit.unregister(self.close)
            self._restore_signal_handlers()
            pending, self._pending_signal = self._pending_signal, None
        if pending is not None:
            self._forward(pending, None)

    # ----- signals -----
    def _install_signal_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # the user asked for this signal to be ignored (e.g. nohup): keep it that way
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        """Put back the handlers found at start(), where ours is still the current one (another cluster
        started later keeps ours in its chain, and hands signals on to it)."""
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._closing and not self._closed:
            self._pending_signal = signum  # cleanup is running: finish it, then hand the signal on
            return
        self.close()
        self._forward(signum, frame)

    def _forward(self, signum: int, frame: Any) -> None:
        """Hand a signal on to the handler the cluster found at start(), as if it had never caught it."""
        handler = self._previous.get(signum, signal.SIG_DFL)
        if callable(handler) and handler not in (signal.SIG_DFL, signal.SIG_IGN):
            handler(signum, frame)
        elif handler is signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    # ----- links -----
    def limit(self, host: int, rate: str) -> None:
        """Rate-limit a host's link in both directions: tbf on egress of the host end (host -> switch) and
        of the switch end (switch -> host). Call again to change the rate, also while a run goes on;
        `rate='none'` lifts the limit."""
        bits = parse_rate(rate)
        ends = ((self.ns(host), HOST_DEV), (self.switch, self.port(host)))
        if bits is None:
            self.unlimit(host)
            return
        if shutil.which("tc") is None:
            raise NetClusterError("`tc` (iproute2) is missing: install iproute2 to limit link rates")
        p = tbf_params(bits)
        for ns, dev in ends:
            cmd = ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
                   "rate", f"{p['rate']}bit", "burst", str(p["burst"]), "limit", str(p["limit"])]  # fmt: skip
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise NetClusterError(f"`{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}")
        self.limits[host] = rate
        self.limit_log.append({"t": time.time(), "host": host, "rate": rate, "bits_per_s": bits, **p})

    def unlimit(self, host: int) -> None:
        for ns, dev in ((self.ns(host), HOST_DEV), (self.switch, self.port(host))):
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
        if self.limits.pop(host, None) is not None:
            self.limit_log.append({"t": time.time(), "host": host, "rate": "none", "bits_per_s": None})

    def qdiscs(self, host: int) -> dict[str, str]:
        """`tc qdisc show` of both ends of a host's link (for checks and reports)."""
        out = {}
        for side, ns, dev in (("host", self.ns(host), HOST_DEV), ("switch", self.switch, self.port(host))):
            out[side] = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True,
                                       text=True).stdout.strip()  # fmt: skip
        return out

    # ----- processes -----
    def popen(self, host: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start `argv` inside a host's namespace, in its own session; it is stopped with the cluster."""
        with self._lock:
            if self._closed or self._closing:
                raise NetClusterError("the cluster is closed")
            return self._processes.popen(None, self.exec_argv(host, argv), **kwargs)

    def stop_processes(self, grace: float | None = None) -> None:
        """SIGTERM every process group started with popen(), SIGKILL what is left after `grace` seconds,
        then SIGKILL anything else still inside the cluster's namespaces."""
        self._processes.stop(self.grace if grace is None else grace)
        self._sweep()

    def _sweep(self, timeout: float = 5.0) -> None:
        """SIGKILL every process inside the cluster's namespaces until none is left (bounded)."""
        deadline = time.monotonic() + timeout
        while self._created and time.monotonic() < deadline:
            pids = [pid for ns in self._created for pid in namespace_pids(ns)]
            if not pids:
                return
            _kill_pids(pids)
            time.sleep(0.05)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "switch": self.switch,
            "hosts": [
                {"host": h, "namespace": self.ns(h), "ip": self.ip(h), "limit": self.limits.get(h)}
                for h in range(self.hosts)
            ],  # fmt: skip
            "limit_log": self.limit_log,
        }


# ----------------------------------------------------------------------------------------------------
# weaksync on the cluster
# ----------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """One torchrun launch on one host."""

    host: int
    role: str  # "server" (host 0: all servers) or "worker"
    argv: list[str]
    stdout: Path
    stderr: Path
    proc: subprocess.Popen | None = None
    files: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"host {self.host} ({'servers' if self.role == 'server' else f'worker {self.host - 1}'})"

    def tail(self) -> str:
        try:
            return failure_reason(self.stderr.read_text(errors="replace"))
        except OSError:
            return ""


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failed)\b.*")
_LOG_LINE = re.compile(r"^(\[?[EWIF]\d{4} |\[W\d|\s*$)")  # torch / c10d log lines and blanks


def failure_reason(stderr: str, lines: int = 3) -> str:
    """The informative part of a failed launch's stderr: the process's own error, not torchrun's
    ChildFailedError box that follows it. Prefers weaksync's one-line errors, then the last exception line,
    then the last few lines."""
    text = stderr.splitlines()
    agent = next((i for i in range(len(text) - 1, -1, -1) if "ChildFailedError" in text[i]), None)
    if agent is not None:  # drop the agent's own traceback and summary box
        tracebacks = [i for i in range(agent + 1) if text[i].startswith("Traceback (most recent call last)")]
        text = text[: tracebacks[-1] if tracebacks else agent]
    ours = [line.strip() for line in text if line.strip().startswith("weaksync: ")]
    if ours:
        return ours[-1]
    exc = [line.strip() for line in text if _EXC_LINE.match(line.strip())]
    if exc:
        return exc[-1]
    kept = [line.strip() for line in text if not _LOG_LINE.match(line)]
    return " | ".join(kept[-lines:])


def torchrun_argv(python: str, nproc: int, args: Sequence[str]) -> list[str]:
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--max-restarts", "0", "-m", "weaksync.runtime.torchrun", *args]  # fmt: skip


def check_run(config: Config, run_id: str | None = None) -> Path:
    """Everything that can fail before a process starts, as one-line ConfigErrors: the run directory is new,
    the model and data exist, the quorums fit the layout. Returns the run directory (not created yet)."""
    from ..config import ConfigError
    from ..runtime.launcher import prepare

    run_id = run_id or config.run.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{config.sync.mode}-{os.urandom(2).hex()}"
    run_dir = Path(config.run.out_dir).resolve() / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run.name: run directory '{run_dir}' already exists: choose another run.name or remove it")
    prepare(config, None)
    return run_dir


def run_training(
    net: NetCluster,
    config: Config,
    *,
    run_id: str | None = None,
    store_port: int | None = None,
    python: str = sys.executable,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[float, dict[int, int]], None] | None = None,
    progress_interval: float = 5.0,
    poll: float = 0.2,
    check: bool = True,
) -> Path:
    """Train `config` on the cluster: host 0 runs the S servers (one torchrun launch, --role server, hosting
    the store), host i (1..N) runs worker i-1 (one launch each, --role worker --first-id i-1). Returns the
    run directory (`<run.out_dir>/<run id>/`, with summary.json). A failed launch stops every other one and
    raises RunFailed naming the host and its last stderr lines (with on_worker_failure=continue a failed
    worker host does not stop the run). Every process started here is stopped in all cases; when it returns
    or raises, nothing runs inside the cluster's namespaces any more (processes others started there included).
    `log` gets one line per launch event; `progress(elapsed seconds, {worker: steps done})` is called every
    `progress_interval` seconds (counted from the workers' event logs). `check=False` skips `check_run`
    (the caller ran it, and passes the run id it returned)."""
    from ..config import ConfigError, dump_config
    from ..runtime.launcher import RunFailed, describe_exit

    say = log or (lambda _msg: None)
    workers, servers = config.cluster.workers, config.cluster.servers
    if workers != net.hosts - 1:
        raise ConfigError(
            f"cluster.workers={workers} but the cluster has {net.hosts - 1} worker hosts: "
            f"build it with workers + 1 hosts"
        )
    run_dir = check_run(config, run_id) if check else Path(config.run.out_dir).resolve() / str(run_id)
    run_id, out_dir = run_dir.name, run_dir.parent
    logs = run_dir / "cluster"
    logs.mkdir(parents=True, exist_ok=True)
    resolved = config.model_copy(deep=True)
    resolved.run.out_dir = str(out_dir)  # the same folder whatever the launches' working directory
    if resolved.security.curve and resolved.security.keys is None:  # the hosts share this machine's disk
        from ..transport.security import RunKeys

        RunKeys.generate(workers).write(run_dir / "keys")
        resolved.security.keys = str(run_dir / "keys")
    launch_config = logs / "launch.yaml"
    launch_config.write_text(dump_config(resolved))
    port = store_port or 29500 + random.randrange(500)  # host 0's namespace is private: any port is free
    common = ["--store", f"{net.ip(0)}:{port}", "--run-id", run_id, "--config", str(launch_config)]
    launches = [Launch(0, "server", torchrun_argv(python, servers, ["--role", "server", *common, "--set",
                       f"cluster.host={net.ip(0)}"]), logs / "host0.stdout", logs / "host0.stderr")]  # fmt: skip
    for h in range(1, net.hosts):
        args = ["--role", "worker", "--first-id", str(h - 1), *common, "--set", f"cluster.host={net.ip(h)}"]
        launches.append(Launch(h, "worker", torchrun_argv(python, 1, args), logs / f"host{h}.stdout",
                               logs / f"host{h}.stderr"))  # fmt: skip
    _write_topology(logs / "cluster.json", net, launches, port)
    tolerate_workers = getattr(config, "on_worker_failure", "stop") == "continue"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    failed: list[str] = []
    try:
        for launch in launches:  # servers first: their launch hosts the store the workers connect to
            out, err = open(launch.stdout, "wb"), open(launch.stderr, "wb")
            launch.files = [out, err]
            launch.proc = net.popen(launch.host, launch.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    env=env)  # fmt: skip
            say(f"started {launch.label} in {net.ns(launch.host)} ({net.ip(launch.host)}), pid {launch.proc.pid}")
        _write_topology(logs / "cluster.json", net, launches, port)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        counter, next_progress = _StepCounter(run_dir / "events"), started + progress_interval
        pending = list(launches)
        while pending:
            if progress is not None and time.monotonic() >= next_progress:
                next_progress += progress_interval
                progress(time.monotonic() - started, counter.counts(workers))
            for launch in list(pending):
                code = launch.proc.poll()  # type: ignore[union-attr]
                if code is None:
                    continue
                pending.remove(launch)
                if code == 0:
                    say(f"{launch.label} finished")
                    continue
                reason = f"{launch.label} failed ({describe_exit(code)}): {launch.tail() or 'no stderr'}"
                if launch.role == "worker" and tolerate_workers:
                    failed.append(reason)
                    say(f"{reason} (on_worker_failure=continue: the run goes on)")
                    continue
                raise RunFailed(f"{reason} (logs in {logs})")
            if deadline is not None and time.monotonic() > deadline:
                names = ", ".join(launch.label for launch in pending)
                raise RunFailed(f"the run did not end within {timeout:g} s: still running {names} (logs in {logs})")
            time.sleep(poll)
    finally:
        net.stop_processes()
        for launch in launches:
            for f in launch.files:
                f.close()
        _write_topology(logs / "cluster.json", net, launches, port, failed)
    if not (run_dir / "summary.json").is_file():
        raise RunFailed(f"the run ended but {run_dir / 'summary.json'} is missing: see the logs in {logs}")
    return run_dir


class _StepCounter:
    """Steps per worker so far, read incrementally from events/worker-<w>.jsonl (flushed about once a second)."""

    def __init__(self, events: Path):
        self.events = events
        self.offsets: dict[int, int] = {}
        self.steps: dict[int, int] = {}

    def counts(self, workers: int) -> dict[int, int]:
        for w in range(workers):
            path = self.events / f"worker-{w}.jsonl"
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets.get(w, 0))
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # a torn last line is read again next time
            self.offsets[w] = self.offsets.get(w, 0) + end
            self.steps[w] = self.steps.get(w, 0) + chunk[:end].count(b'"ev":"step"')
        return {w: self.steps.get(w, 0) for w in range(workers)}


def _write_topology(path: Path, net: NetCluster, launches: list[Launch], port: int, failed: Any = None) -> None:
    doc = {
        **net.describe(),
        "store": f"{net.ip(0)}:{port}",
        "launches": [
            {
                "host": x.host,
                "role": x.role,
                "argv": net.exec_argv(x.host, x.argv),
                "pid": x.proc.pid if x.proc else None,
                "exit_code": x.proc.returncode if x.proc else None,
            }
            for x in launches
        ],  # fmt: skip
        "failed": failed or [],
    }
    path.write_text(json.dumps(doc, indent=1))
