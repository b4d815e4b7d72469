"""Data plane: weaksync's block push/pull path against raw pyzmq on the same messages, in one run.

    python benchmarks/dataplane.py --seconds 2

A client thread sends a block (push) and waits for a block back (reply), over a DEALER/ROUTER pair on
loopback, for several block sizes. "weaksync" encodes with the msgpack header, decodes and validates
every message (kind, fields, payload size, finiteness on the server side) and sends payloads zero-copy;
"raw" sends the same payload bytes with a fixed 8-byte header and no checks. Sizes are interleaved and
each measured for --seconds; the ratio is weaksync / raw round trips per second.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
import zmq

from weaksync.cli.main import stop_on_interrupt
from weaksync.transport.messages import Block, Push, decode, encode, payload_problem
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
        if mode == "weaksync":
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
        if mode == "weaksync":
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
    results: dict[tuple[str, int], list[float]] = {}
    for mode in ("weaksync", "raw"):
        results.update({(mode, n): [] for n in args.sizes})
    ctx = zmq.Context()
    for _ in range(args.repeats):
        for numel in args.sizes:
            for mode in ("weaksync", "raw"):  # interleaved: the same load for both
                router, endpoint = bind_router(ctx, "127.0.0.1")
                dealer = connect_dealer(ctx, endpoint, b"w0")
                stop = threading.Event()
                server = threading.Thread(target=serve, args=(router, mode, stop), daemon=True)
                server.start()
                results[(mode, numel)].append(round_trips(dealer, mode, numel, args.seconds))
                stop.set()
                server.join()
                router.close(0)
                dealer.close(0)
    ctx.term()
    print(
        "| block (float32 values) | bytes each way | weaksync round trips/s | raw pyzmq round trips/s | weaksync / raw "
        "| weaksync MB/s each way |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for numel in args.sizes:
        ours = max(results[("weaksync", numel)])
        raw = max(results[("raw", numel)])
        rate = ours * numel * 4 / 1e6
        print(f"| {numel:,} | {numel * 4:,} | {ours:,.0f} | {raw:,.0f} | {ours / raw:.2f} | {rate:,.0f} |")
    print(f"\nbest of {args.repeats} interleaved repeats of {args.seconds:g} s per size and path")


if __name__ == "__main__":
    main()
