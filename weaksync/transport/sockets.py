"""Socket setup for the data plane: ROUTER on servers, one DEALER per server on each worker."""

from __future__ import annotations

import zmq


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


def bind_router(ctx: zmq.Context, host: str, rcvhwm: int = DEFAULT_HWM) -> tuple[zmq.Socket, str]:
    """A server's socket on a free port of `host`, reading at most `rcvhwm` messages ahead per peer;
    returns it and the endpoint to advertise."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished peer raises instead of vanishing
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity
    bind_host = host if _is_ip_literal(host) else "*"  # a hostname: listen everywhere, advertise the name
    port = sock.bind_to_random_port(f"tcp://{bind_host}")
    return sock, f"tcp://{host}:{port}"


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def connect_dealer(ctx: zmq.Context, endpoint: str, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock
