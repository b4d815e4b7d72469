"""Socket setup for the data plane: ROUTER on servers, one DEALER per server on each worker; CURVE on both
ends when the run has keys (see security.py)."""

from __future__ import annotations

import zmq

from .security import RoleKeys


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)  # never block process exit on unsent messages
    sock.setsockopt(zmq.SNDHWM, 0)  # the protocol bounds what is in flight (<= 2B per worker); never drop
    sock.setsockopt(zmq.RCVHWM, 0)


INBOX_BYTES = 4 << 20  # per worker: bytes of complete messages a server lets ZeroMQ queue ahead of its loop
DEFAULT_HWM = 1000  # ZeroMQ's own default


def inbox_hwm(max_block_bytes: int) -> int:
    """Messages a server queues per peer before ZeroMQ stops reading that peer's TCP stream.

    ZeroMQ reads every arriving message into memory at once; unbounded, a server's RSS grows whenever pushes
    arrive faster than it accumulates them (about half a share more at peak on a ResNet-50 server: +19-24 MiB
    against 43-47 MiB shares). Past the limit the bytes wait in the kernel and in the worker's send queue, which
    holds views of its push vector anyway. Small blocks get a limit above the 2·B messages a worker can have
    in flight (27 for the digits job's 150 kB blocks), so they never wait."""
    return max(1, min(DEFAULT_HWM, INBOX_BYTES // max(1, max_block_bytes)))


def bind_router(
    ctx: zmq.Context, host: str, rcvhwm: int = DEFAULT_HWM, keys: RoleKeys | None = None, port: int | None = None
) -> tuple[zmq.Socket, str]:
    """A server's socket on a free port of `host` (or on `port`: a restarted server takes the port its peers
    reconnect to), reading at most `rcvhwm` messages ahead per peer; returns it and the endpoint to
    advertise. With `keys` it is a CURVE server: start the context's `PeerAuthenticator` first, or libzmq
    lets any client key in."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    if keys is not None:
        sock.curve_server = True
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished peer raises instead of vanishing
    # without keys a restarted worker takes over its name; with keys names are ZeroMQ's, and handing one
    # over to whoever claims it would let a key holder steal another connection's replies
    sock.setsockopt(zmq.ROUTER_HANDOVER, 0 if keys is not None else 1)
    bind_host = host if _is_ip_literal(host) else "*"  # a hostname: listen everywhere, advertise the name
    if port is None:
        port = sock.bind_to_random_port(f"tcp://{bind_host}")
    else:
        try:
            sock.bind(f"tcp://{bind_host}:{port}")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
    return sock, f"tcp://{host}:{port}"


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def connect_dealer(ctx: zmq.Context, endpoint: str, identity: bytes, keys: RoleKeys | None = None) -> zmq.Socket:
    """A client socket. Without keys it names itself `identity` (the server trusts that name); with keys
    the server knows it by its key, and ZeroMQ gives the connection a routing id nobody can choose, so
    no peer can take over another's replies."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    if keys is None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    else:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    sock.connect(endpoint)
    return sock
