"""A load generator process: acknowledged increments over TCP, against ftds or PySyncObj.

Saturation (``--rate 0``): as many requests in flight as ``--conns`` x ``--depth`` allow.
Fixed rate: requests paced over ``--conns`` x ``--depth`` one-at-a-time senders.
Prints one JSON object: acked, ops/s, p50/p99 latency (ms) over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time

from ftds.runloop import tune_gc
from ftds.workload import percentile

REQ = struct.Struct(">Q")
REP = struct.Struct(">Qq")


class Window:
    def __init__(self, warmup: float, duration: float) -> None:
        now = time.monotonic()
        self.start = now + warmup
        self.end = self.start + duration
        self.acked = 0
        self.latencies: list[float] = []

    def record(self, sent: float, done: float) -> None:
        if self.start <= sent and done <= self.end:
            self.acked += 1
            self.latencies.append((done - sent) * 1000)

    def result(self, duration: float) -> dict[str, float]:
        return {"acked": self.acked, "ops": self.acked / duration,
                "p50": percentile(self.latencies, 50), "p99": percentile(self.latencies, 99)}


async def pace(interval: float, next_at: float) -> float:
    next_at += interval
    delay = next_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
        return next_at
    return time.monotonic()


async def run_ftds(args: argparse.Namespace, window: Window) -> None:
    from ftds.client import Client
    from ftds.config import load_config

    config = load_config(args.config)
    client = Client(config, config.read_key(), args.name, trace=False)
    await client.start()
    await client.wait_connected(10)
    senders = args.conns * args.depth
    interval = senders / args.rate if args.rate else 0.0

    async def sender(i: int) -> None:
        session = client.session(f"{args.name}.{i}")
        next_at = time.monotonic() + (interval * i / senders if interval else 0)
        while time.monotonic() < window.end:
            sent = time.monotonic()
            await session.call({"op": "incr", "key": f"k{i % 8}"})
            window.record(sent, time.monotonic())
            if interval:
                next_at = await pace(interval, next_at)

    await asyncio.gather(*(sender(i) for i in range(senders)))
    await client.close()


class PsoConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        usable = len(self.buf) - len(self.buf) % REP.size
        for rid, value in REP.iter_unpack(self.buf[:usable]):
            fut = self.waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(value)
        self.buf = self.buf[usable:]

    def call(self, rid: int) -> asyncio.Future[int]:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.transport.write(REQ.pack(rid))
        return fut


async def run_pysyncobj(args: argparse.Namespace, window: Window) -> None:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(args.conns):
        _, proto = await loop.create_connection(PsoConn, "127.0.0.1", args.port)
        conns.append(proto)
    senders = args.conns * args.depth
    interval = senders / args.rate if args.rate else 0.0
    counter = iter(range(1, 1 << 62))

    async def sender(i: int) -> None:
        conn = conns[i % len(conns)]
        next_at = time.monotonic() + (interval * i / senders if interval else 0)
        while time.monotonic() < window.end:
            sent = time.monotonic()
            value = await conn.call(next(counter) + (i << 40))
            if value < 0:
                raise RuntimeError("PySyncObj refused an increment")
            window.record(sent, time.monotonic())
            if interval:
                next_at = await pace(interval, next_at)

    await asyncio.gather(*(sender(i) for i in range(senders)))
    for conn in conns:
        conn.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=["ftds", "pysyncobj"], required=True)
    parser.add_argument("--config", help="ftds cluster file")
    parser.add_argument("--port", type=int, help="PySyncObj front-end port (the leader's)")
    parser.add_argument("--name", default="B1")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    tune_gc()  # the same client process settings for every system measured
    window = Window(args.warmup, args.duration)
    runner = run_ftds if args.system == "ftds" else run_pysyncobj
    try:
        import uvloop
        uvloop.run(runner(args, window))
    except ImportError:  # pragma: no cover
        asyncio.run(runner(args, window))
    print(json.dumps(window.result(args.duration)))


if __name__ == "__main__":
    main()
