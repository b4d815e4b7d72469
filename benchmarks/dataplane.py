"""Data plane: weaksync's block push/pull path, plain and over CURVE, against raw pyzmq on the same
messages, in one run.

    python benchmarks/dataplane.py --seconds 2

A client thread sends a block (push) and waits for a block back (reply), over a DEALER/ROUTER pair on
loopback, for several block sizes. "weaksync" encodes with the msgpack header, decodes and validates
every message (kind, fields, payload size, finiteness on the server side) and sends payloads zero-copy;
"raw" sends the same payload bytes with a fixed 8-byte header and no checks. Sizes are interleaved and
each measured for --seconds; the ratio is weaksync / raw round trips per second. "curve" is the
"weaksync" path on CURVE sockets (encrypted and authenticated, a PeerAuthenticator answering the
handshake), as every run uses them by default; its ratio is curve / weaksync.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
import zmq

from weaksync.cli.main import stop_on_interrupt
from weaksync.transport.messages import Block, Push, decode, encode, payload_problem
from weaksync.transport.security import PeerAuthenticator, RunKeys
from weaksync.transport.sockets import bind_router, connect_dealer


def serve(router: zmq.Socket, mode: str, stop: threading.Event) -> None:
    """Echo server: answer every push with a block of the same size."""
    reply_cache: dict[int, torch.Tensor] = {}
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(50):
            continue
        frames = router.recv_multipart(copy=False)
        identity = frames[0].bytes
        if mode in ("weaksync", "curve"):
            msg = decode(frames[1:])
            assert isinstance(msg, Push) and payload_problem(msg.grad, msg.grad.numel()) is None
            block = reply_cache.setdefault(msg.grad.numel(), torch.ones(msg.grad.numel()))
            router.send_multipart([identity, *encode(Block(msg.block, version=1, values=block))], copy=False)
        else:
            router.send_multipart([identity, b"BLOCK\x00\x00\x00", frames[2]], copy=False)


def round_trips(dealer: zmq.Socket, mode: str, numel: int, seconds: float) -> float:
    payload = torch.randn(numel)
    raw = payload.numpy().tobytes()
    count = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        if mode in ("weaksync", "curve"):
            dealer.send_multipart(encode(Push(0, 0, base=0, step=count, grad=payload)), copy=False)
            reply = decode(dealer.recv_multipart(copy=False))
            assert isinstance(reply, Block) and reply.values.numel() == numel
        else:
            dealer.send_multipart([b"PUSH\x00\x00\x00\x00", raw], copy=False)
            dealer.recv_multipart(copy=False)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 16_384, 262_144, 1_048_576])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    modes = ("weaksync", "curve", "raw")
    results: dict[tuple[str, int], list[float]] = {}
    for mode in modes:
        results.update({(mode, n): [] for n in args.sizes})
    ctx = zmq.Context()  # the server's; the client has its own, as a worker process does (one I/O thread each)
    client_ctx = zmq.Context()
    keys = RunKeys.generate(1)
    authenticator = PeerAuthenticator(ctx, keys.for_principal("server"))
    authenticator.start()
    for _ in range(args.repeats):
        for numel in args.sizes:
            for mode in modes:  # interleaved: the same load for all
                server_keys = keys.for_principal("server") if mode == "curve" else None
                client_keys = keys.for_principal("worker-0") if mode == "curve" else None
                router, endpoint = bind_router(ctx, "127.0.0.1", keys=server_keys)
                dealer = connect_dealer(client_ctx, endpoint, b"w0", client_keys)
                stop = threading.Event()
                server = threading.Thread(target=serve, args=(router, mode, stop), daemon=True)
                server.start()
                results[(mode, numel)].append(round_trips(dealer, mode, numel, args.seconds))
                stop.set()
                server.join()
                router.close(0)
                dealer.close(0)
    authenticator.stop()
    ctx.term()
    client_ctx.term()
    print(
        "| block (float32 values) | bytes each way | weaksync round trips/s | raw pyzmq round trips/s | weaksync / raw "
        "| weaksync MB/s each way | CURVE round trips/s | CURVE / weaksync |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for numel in args.sizes:
        ours = max(results[("weaksync", numel)])
        raw = max(results[("raw", numel)])
        curve = max(results[("curve", numel)])
        rate = ours * numel * 4 / 1e6
        print(f"| {numel:,} | {numel * 4:,} | {ours:,.0f} | {raw:,.0f} | {ours / raw:.2f} | {rate:,.0f} "
              f"| {curve:,.0f} | {curve / ours:.2f} |")  # fmt: skip
    print(f"\nbest of {args.repeats} interleaved repeats of {args.seconds:g} s per size and path")


if __name__ == "__main__":
    main()
