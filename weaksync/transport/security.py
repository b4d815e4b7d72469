"""Who may speak on the data plane: ZeroMQ CURVE keys per principal, and a ZAP handler that binds each key
to the routing ids it was issued for.

Principals are `worker-<w>`, `evaluator` and `launcher`; every server shares one server key pair. A
client knows the servers' public key, so it talks to a real server or to nobody; a server accepts a
connection only when its client key is one of the run's, and every message of that connection carries the
key's principal (ZeroMQ's "User-Id" property), which the server checks against what the message claims.
Clients do not choose their routing ids (ZeroMQ makes them), and the server sends a worker's replies to
the connection its own key last spoke from. So a peer can act only as the role and worker id its key was
issued for: no stop as the launcher, no peek as the evaluator, no push as another worker, and no taking
over someone else's replies. Everything after the handshake is
encrypted and authenticated (CurveZMQ), so nobody on the path can read θ or alter a gradient.

Keys come from the launcher, generated per run and handed to each process in its start-up arguments
(`RunKeys.for_principal`), never through the TCPStore, which has no authentication of its own. For
torchrun and several hosts, `weaksync keys DIR` writes them as pyzmq certificate files: every host needs
`DIR/public/` and the one secret file of the role it runs (see docs/guarantees.md, "Threat model").
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ..errors import WeaksyncError

SERVER = "server"
LAUNCHER = "launcher"
EVALUATOR = "evaluator"


class KeysError(WeaksyncError, ValueError):
    """A key file or directory that cannot serve this role."""


def worker_principal(worker: int) -> str:
    return f"worker-{worker}"


def client_principals(workers: int) -> list[str]:
    return [worker_principal(w) for w in range(workers)] + [EVALUATOR, LAUNCHER]


@dataclass(frozen=True)
class RoleKeys:
    """What one process needs: its own key pair, the servers' public key and, on a server, every client's
    public key with its principal."""

    principal: str
    public: bytes
    secret: bytes
    server_public: bytes
    clients: dict[bytes, str] = field(default_factory=dict)  # z85 public key -> principal (servers only)


@dataclass(frozen=True)
class RunKeys:
    """Every key pair of one run, generated in memory by the launcher."""

    server: tuple[bytes, bytes]
    clients: dict[str, tuple[bytes, bytes]]

    @classmethod
    def generate(cls, workers: int) -> RunKeys:
        return cls(zmq.curve_keypair(), {p: zmq.curve_keypair() for p in client_principals(workers)})

    def for_principal(self, principal: str) -> RoleKeys:
        if principal == SERVER:
            clients = {public: name for name, (public, _) in self.clients.items()}
            return RoleKeys(SERVER, *self.server, server_public=self.server[0], clients=clients)
        public, secret = self.clients[principal]
        return RoleKeys(principal, public, secret, server_public=self.server[0])

    def write(self, directory: Path) -> None:
        """pyzmq certificate files: `public/<principal>.key` for everyone, `<principal>.key_secret` each."""
        public_dir = directory / "public"
        public_dir.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        for name, (public, secret) in [(SERVER, self.server), *self.clients.items()]:
            _write_certificate(public_dir / f"{name}.key", public, None)
            _write_certificate(directory / f"{name}.key_secret", public, secret)


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    lines = ["#   weaksync CURVE certificate (ZPL, as zmq.auth writes it)", "metadata", "curve",
             f'    public-key = "{public.decode()}"']  # fmt: skip
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    path.write_text("\n".join(lines) + "\n")
    if secret is not None:
        path.chmod(0o600)


def load_role_keys(directory: Path, principal: str) -> RoleKeys:
    """A role's keys from a directory `weaksync keys` wrote (its own secret file, and `public/`)."""
    secret_file = directory / f"{principal}.key_secret"
    public_dir = directory / "public"
    if not public_dir.is_dir():
        raise KeysError(
            f"security.keys: '{directory}' has no public/ folder: create it with `weaksync keys {directory}`"
        )
    if not secret_file.is_file():
        raise KeysError(
            f"security.keys: '{secret_file}' is missing: this host runs {principal}; copy that file from the "
            "directory `weaksync keys` wrote (or create keys for enough workers)"
        )
    public, secret = zmq.auth.load_certificate(secret_file)
    server_file = public_dir / f"{SERVER}.key"
    if not server_file.is_file():
        raise KeysError(f"security.keys: '{server_file}' is missing: copy the whole public/ folder to this host")
    server_public, _ = zmq.auth.load_certificate(server_file)
    clients = {}
    if principal == SERVER:
        for path in sorted(public_dir.glob("*.key")):
            if path.stem != SERVER:
                clients[zmq.auth.load_certificate(path)[0]] = path.stem
    if secret is None:
        raise KeysError(f"security.keys: '{secret_file}' holds no secret key: write the keys again")
    return RoleKeys(principal, public, secret, server_public, clients)


class PeerAuthenticator(ThreadAuthenticator):
    """ZAP for a server's context: CURVE with the run's client keys, each bound to its principal's routing
    ids; refusals are counted by reason (read them from any thread)."""

    def __init__(self, ctx: zmq.Context, keys: RoleKeys):
        super().__init__(ctx)
        self.keys = keys
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) < 6:
            return await super().handle_zap_message(msg)  # pyzmq answers malformed ZAP requests itself
        _version, request_id, _domain, _address, _own_routing_id, mechanism = msg[:6]
        credentials = msg[6:]
        if mechanism != b"CURVE" or len(credentials) != 1:
            return self._refuse(request_id, "not CURVE")
        principal = self.keys.clients.get(z85.encode(credentials[0]))
        if principal is None:
            return self._refuse(request_id, "unknown key")
        # the principal travels with every message of this connection (its "User-Id"): the server checks
        # each message's claims against it
        self._send_zap_reply(request_id, b"200", b"OK", principal)

    def _refuse(self, request_id: bytes, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1
        self._send_zap_reply(request_id, b"400", reason.encode(errors="replace")[:255])

    def refusals(self) -> dict[str, int]:
        with self._lock:
            return dict(self.refused)
