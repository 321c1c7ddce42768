"""Client latency and replica memory under a flood of strangers, against the same run without.

Three replicas on 127.0.0.1 and a load generator pacing acknowledged increments (as in
``bench core``'s latency run). Each trial runs the load twice, alternately without and with a
flood on the primary's two ports: ``--idle`` connections that never say anything and
``--half`` connections that announce the largest frame a stranger may (64 KiB) and send all
but its last byte. The flood is sustained: a connection the replica closes (after
``tunables.hello_timeout``) is opened again at once. Strangers come from 127.0.0.2-4, other
hosts of the loopback network, so the per-source cap is not what bounds them. Reported: client
p50/p99 with and without, their ratio, and the primary's resident memory (VmRSS while flooded,
VmHWM at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftds.wire import PRE_AUTH_LIMIT

from .core_bench import FtdsCluster, loadgens

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# The most a stranger can make a port buffer: the largest frame allowed before hello, less
# one byte, so it never completes.
HALF_FRAME = struct.pack(">I", PRE_AUTH_LIMIT) + b"\0" * (PRE_AUTH_LIMIT - 1)
# Under TLS a stranger's first words are a handshake: the largest TLS record a ClientHello may
# come in (2^14 bytes), less its last byte, so the server's TLS layer holds it unfinished.
HALF_RECORD = b"\x16\x03\x01" + struct.pack(">H", 1 << 14) + b"\x01" * ((1 << 14) - 1)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


@dataclass
class Stranger:
    kind: str  # idle | half
    port: int
    source: str
    dialled: float = 0.0  # monotonic, as the connect began (the server's clock starts later)
    closed: float | None = None  # when the server closed it (EOF or reset)

    @property
    def held(self) -> float | None:
        """An upper bound of how long the server held it."""
        return None if self.closed is None else self.closed - self.dialled


@dataclass
class Flood:
    """Strangers on some ports of 127.0.0.1, spread over ``SOURCES``."""

    ports: list[int]
    idle: int
    half: int
    sustain: bool = False  # open a closed one again, until stop()
    half_payload: bytes = HALF_FRAME
    strangers: list[Stranger] = field(default_factory=list)
    refused: int = 0  # connects that failed or were closed before we could write
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def plan(self) -> list[Stranger]:
        kinds = ["idle"] * self.idle + ["half"] * self.half
        return [Stranger(kind, self.ports[i % len(self.ports)], SOURCES[i % len(SOURCES)])
                for i, kind in enumerate(kinds)]

    async def one(self, s: Stranger, opened: asyncio.Event | None = None) -> None:
        s.dialled = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", s.port, local_addr=(s.source, 0))
        except OSError:
            self.refused += 1
            if opened is not None:
                opened.set()
            return
        try:
            if s.kind == "half":
                writer.write(self.half_payload)
                await writer.drain()
            if opened is not None:
                opened.set()
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            s.closed = time.monotonic()
        except ConnectionError:
            s.closed = time.monotonic()
            self.refused += 1
        finally:
            writer.close()

    async def run(self, opened: asyncio.Event | None = None) -> None:
        """Open every stranger; return once the server closed them all (or, sustained, once
        stopped). ``opened`` is set when all were connected (and the half frames written)."""
        plan = self.plan()

        async def slot(s: Stranger, ready: asyncio.Event) -> None:
            await self.one(s, ready)
            self.strangers.append(s)
            while self.sustain and not self._stop.is_set():
                s = Stranger(s.kind, s.port, s.source)
                await self.one(s)
                self.strangers.append(s)

        readies = [asyncio.Event() for _ in plan]
        tasks = [asyncio.create_task(slot(s, e)) for s, e in zip(plan, readies, strict=True)]
        try:
            await asyncio.gather(*(e.wait() for e in readies))
            if opened is not None:
                opened.set()
            if self.sustain:
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=self.sustain)
        finally:
            for task in tasks:
                task.cancel()

    def stop(self) -> None:
        self._stop.set()


class FloodThread:
    """A sustained flood on a loop of its own, beside a blocking measurement."""

    def __init__(self, ports: list[int], idle: int, half: int,
                 half_payload: bytes = HALF_FRAME) -> None:
        self.flood = Flood(ports, idle, half, sustain=True, half_payload=half_payload)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            opened = asyncio.Event()
            waiter = asyncio.create_task(opened.wait())
            waiter.add_done_callback(lambda _t: self._opened.set())
            await self.flood.run(opened)

        asyncio.run(main())

    def __enter__(self) -> FloodThread:
        self._thread.start()
        if not self._opened.wait(60):
            raise RuntimeError("the flood did not open its connections in 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.flood.stop)
        self._thread.join(30)


def trial(cluster: FtdsCluster, pid: int, ports: list[int], flood: bool, args: Any
          ) -> dict[str, float]:
    run = ["--system", "ftds", "--config", str(cluster.path), "--name", "F", "--conns", "1",
           "--depth", "200", "--rate", str(args.rate), "--duration", str(args.duration)]
    if not flood:
        result = loadgens([run])[0]
        return {"p50": result["p50"], "p99": result["p99"], "ops": result["ops"],
                "rss_mib": memory_kib(pid)["VmRSS"] / 1024}
    with FloodThread(ports, args.idle, args.half,
                     HALF_RECORD if args.tls else HALF_FRAME) as flooding:
        held = memory_kib(pid)["VmRSS"]
        result = loadgens([run])[0]
        held = max(held, memory_kib(pid)["VmRSS"])
        strangers = len(flooding.flood.strangers)
    return {"p50": result["p50"], "p99": result["p99"], "ops": result["ops"],
            "rss_mib": held / 1024, "strangers_closed": strangers}


def measure(args: Any, out: Any = print) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {"quiet": [], "flood": []}
    with tempfile.TemporaryDirectory(prefix="ftds-bench-") as tmp, \
            FtdsCluster("passive", Path(tmp), tls=args.tls) as cluster:
        primary = cluster.config.replica("S1")
        pid = cluster.procs[0].pid
        ports = [primary.port, primary.control_port]
        for repeat in range(1, args.repeats + 1):
            for name in ("quiet", "flood"):
                row = trial(cluster, pid, ports, name == "flood", args)
                rows[name].append(row)
                extra = f", {row['strangers_closed']:.0f} strangers closed" \
                    if name == "flood" else ""
                out(f"  run {repeat}/{args.repeats} {name:5s} at {row['ops']:.0f}/s: "
                    f"p50 {row['p50']:6.2f} ms  p99 {row['p99']:6.2f} ms  "
                    f"S1 RSS {row['rss_mib']:.0f} MiB{extra}")
        peak = memory_kib(pid)["VmHWM"] / 1024
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "ops",
                                                                       "rss_mib")}
               for name, rs in rows.items()}
    return {"medians": medians, "peak_rss_mib": peak, "runs": rows,
            "flood": {"idle": args.idle, "half": args.half, "sources": list(SOURCES)},
            "rate": args.rate, "duration": args.duration, "tls": args.tls}


def report(result: dict[str, Any], repeats: int) -> str:
    q, f = result["medians"]["quiet"], result["medians"]["flood"]
    fl = result["flood"]
    return "\n".join([
        f"median of {repeats} runs, 3 replicas on 127.0.0.1"
        f"{' with mutual TLS' if result.get('tls') else ''}, {result['rate']:.0f} acked "
        f"increments/s; flood: {fl['idle']} idle + {fl['half']} half-"
        f"{'record' if result.get('tls') else 'frame'} strangers on the primary's two ports, "
        "sustained",
        f"{'':14s} {'p50':>9s} {'p99':>9s} {'S1 RSS':>9s}",
        f"{'without flood':14s} {q['p50']:7.2f}ms {q['p99']:7.2f}ms {q['rss_mib']:6.0f}MiB",
        f"{'with flood':14s} {f['p50']:7.2f}ms {f['p99']:7.2f}ms {f['rss_mib']:6.0f}MiB",
        f"p99 ratio {f['p99'] / q['p99']:.2f}x (target <= 2x); S1 peak RSS "
        f"{result['peak_rss_mib']:.0f} MiB (target < 200 MiB)",
    ])


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ftds.cli import COUNT, NON_NEGATIVE_INT, RATE, SECONDS

    parser = argparse.ArgumentParser(prog="ftds bench flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=COUNT, default=3)
    parser.add_argument("--duration", type=SECONDS, default=6.0)
    parser.add_argument("--rate", type=RATE, default=1000.0)
    parser.add_argument("--idle", type=NON_NEGATIVE_INT, default=500)
    parser.add_argument("--half", type=NON_NEGATIVE_INT, default=100)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--tls", action="store_true",
                        help="the cluster runs mutual TLS; half strangers send most of a TLS "
                        "record instead of a frame")
    args = parser.parse_args(argv)
    result = measure(args)
    print()
    print(report(result, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
