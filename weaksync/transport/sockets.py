"""Socket setup for the data plane: ROUTER on servers, one DEALER per server on each worker."""

from __future__ import annotations

import zmq


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)  # never block process exit on unsent messages
    sock.setsockopt(zmq.SNDHWM, 0)  # the protocol bounds what is in flight (<= 2B per worker); never drop
    sock.setsockopt(zmq.RCVHWM, 0)


def bind_router(ctx: zmq.Context, host: str) -> tuple[zmq.Socket, str]:
    """A server's socket on a free port of `host`; returns it and the endpoint to advertise."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
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
