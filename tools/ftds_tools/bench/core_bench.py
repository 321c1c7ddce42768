"""Throughput and latency of acknowledged increments: ftds passive, ftds active, PySyncObj.

All three run in the same invocation on this machine, three nodes each on 127.0.0.1, loaded by
separate client processes over TCP (``ftds_tools.bench.loadgen``). For each system:
acknowledged ops/s at saturation (the best of a few concurrency levels) and p50/p99 latency at a
fixed 1,000 ops/s; the median over repeats, and the ratios ftds / PySyncObj.

With ``--tls``, ftds passive also runs with mutual TLS on every link, in the same rounds, and
both passive rows add the p50 of one client with one request in flight: the cost of TLS.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftds import ctl, local
from ftds.config import load_config
from ftds.view import View


def loadgens(args_list: list[list[str]]) -> list[dict[str, float]]:
    procs = [subprocess.Popen([sys.executable, "-m", "ftds_tools.bench.loadgen", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in args_list]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed: {err.decode()[-1500:]}")
        results.append(json.loads(out))
    return results


def combine(results: list[dict[str, float]]) -> dict[str, float]:
    return {"ops": sum(r["ops"] for r in results),
            "p50": max(r["p50"] for r in results), "p99": max(r["p99"] for r in results)}


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


class FtdsCluster:
    def __init__(self, mode: str, workdir: Path, tls: bool = False) -> None:
        self.dir = workdir / f"ftds-{mode}{'-tls' if tls else ''}"
        self.path = local.write_cluster(self.dir, 3, mode, trace={"requests": False}, tls=tls)
        self.config = load_config(self.path)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> FtdsCluster:
        for rid in self.config.replica_ids:
            log = open(self.dir / "logs" / f"{rid}.log", "ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "ftds", "replica", "--config", str(self.path), "--id", rid],
                stdout=log, stderr=subprocess.STDOUT))
            log.close()
        key = self.config.read_key()

        async def boot() -> None:
            async def answering() -> bool:
                return all((await ctl.statuses(self.config, key, 0.5)).values())
            await ctl.wait_for(answering, 20)
            ids = tuple(self.config.replica_ids)
            await ctl.send_view(self.config, key, View(1, 0, ids[0], ids))

            async def ready() -> bool:
                return all(s and s["i_am_ready"]
                           for s in (await ctl.statuses(self.config, key, 0.5)).values())
            await ctl.wait_for(ready, 20)

        _run(boot())
        return self

    def __exit__(self, *exc: object) -> None:
        stop_processes(self.procs)

    def saturation(self, duration: float) -> dict[str, float]:
        best: dict[str, float] = {"ops": 0.0}
        for depth in (256, 512):
            result = combine(loadgens([
                ["--system", "ftds", "--config", str(self.path), "--name", f"B{i}{depth}",
                 "--conns", "1", "--depth", str(depth), "--duration", str(duration)]
                for i in (1, 2)]))
            if result["ops"] > best["ops"]:
                best = result
        return best

    def fixed_rate(self, rate: float, duration: float) -> dict[str, float]:
        return combine(loadgens([["--system", "ftds", "--config", str(self.path), "--name", "L",
                                  "--conns", "1", "--depth", "200", "--rate", str(rate),
                                  "--duration", str(duration)]]))

    def one_client(self, duration: float) -> dict[str, float]:
        """One client, one request in flight: the latency every request pays."""
        return combine(loadgens([["--system", "ftds", "--config", str(self.path), "--name", "O",
                                  "--conns", "1", "--depth", "1", "--duration",
                                  str(duration)]]))


class PySyncObjCluster:
    def __init__(self, workdir: Path, base: int = 17300) -> None:
        self.dir = workdir / "pysyncobj"
        self.dir.mkdir(parents=True, exist_ok=True)
        base = local.pick_base(3, base)
        self.raft = [f"127.0.0.1:{base + i}" for i in range(1, 4)]
        self.front = [base + 10 + i for i in range(1, 4)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leader_port = 0

    def __enter__(self) -> PySyncObjCluster:
        for i in range(3):
            partners = [a for j, a in enumerate(self.raft) if j != i]
            log = open(self.dir / f"node{i + 1}.log", "ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "ftds_tools.bench.pysyncobj_node", "--raft", self.raft[i],
                 "--port", str(self.front[i]), "--partners", *partners],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir))
            log.close()
        deadline = time.monotonic() + 30
        while not self.leader_port:
            if time.monotonic() > deadline:
                raise RuntimeError("PySyncObj elected no leader in 30 s")
            time.sleep(0.2)
            self.leader_port = self._leader()
        return self

    def _leader(self) -> int:
        import socket
        import struct

        for port in self.front:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(struct.pack(">Q", 0))
                    data = sock.recv(16)
                    if len(data) == 16 and struct.unpack(">Qq", data)[1] == 1:
                        return port
            except OSError:
                continue
        return 0

    def __exit__(self, *exc: object) -> None:
        stop_processes(self.procs)

    def saturation(self, duration: float) -> dict[str, float]:
        best: dict[str, float] = {"ops": 0.0}
        # 128 connections x 128 pipelined requests is where it peaks on these machines.
        for conns, depth in ((32, 128), (64, 128)):
            result = combine(loadgens([
                ["--system", "pysyncobj", "--port", str(self.leader_port), "--conns", str(conns),
                 "--depth", str(depth), "--duration", str(duration)]
                for _ in (1, 2)]))
            if result["ops"] > best["ops"]:
                best = result
        return best

    def fixed_rate(self, rate: float, duration: float) -> dict[str, float]:
        return combine(loadgens([["--system", "pysyncobj", "--port", str(self.leader_port),
                                  "--conns", "10", "--depth", "20", "--rate", str(rate),
                                  "--duration", str(duration)]]))


def _run(coro: Any) -> Any:
    import asyncio
    return asyncio.run(coro)


def measure(repeats: int = 3, duration: float = 4.0, rate: float = 1000.0,
            out: Any = print, tls: bool = False) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {"ftds passive": [], "ftds active": [],
                                               "PySyncObj": []}
    if tls:
        runs["ftds passive TLS"] = []
    with tempfile.TemporaryDirectory(prefix="ftds-bench-") as tmp:
        work = Path(tmp)
        for repeat in range(1, repeats + 1):
            names = list(runs)
            shift = (repeat - 1) % len(names)  # each round in another order: no favoured slot
            for name in names[shift:] + names[:shift]:
                if name == "PySyncObj":
                    cluster: Any = PySyncObjCluster(work)
                else:
                    cluster = FtdsCluster(name.split()[1], work, tls=name.endswith("TLS"))
                one: dict[str, float] = {}
                with cluster:
                    # Latency first, on a fresh cluster: right after a saturation run the
                    # replicas spend a moment digesting the large log it left (one-time
                    # pauses that are not the steady state at 1,000 ops/s).
                    lat = cluster.fixed_rate(rate, duration)
                    if tls and name.startswith("ftds passive"):
                        one = cluster.one_client(duration)
                    sat = cluster.saturation(duration)
                row = {"ops": sat["ops"], "p50": lat["p50"], "p99": lat["p99"],
                       "rate": lat["ops"]}
                if one:
                    row["p50_one_client"] = one["p50"]
                    row["ops_one_client"] = one["ops"]
                runs[name].append(row)
                solo = f"  one client: p50 {one['p50']:.3f} ms" if one else ""
                out(f"  run {repeat}/{repeats} {name:16s} {row['ops']:9.0f} acked ops/s   "
                    f"at {lat['ops']:.0f}/s: p50 {row['p50']:7.2f} ms  p99 {row['p99']:7.2f} ms"
                    f"{solo}")
    return {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            for name, rows in runs.items()}


def report(medians: dict[str, dict[str, float]], repeats: int) -> str:
    base = medians["PySyncObj"]
    lines = [f"median of {repeats} runs, 3 nodes on 127.0.0.1, acknowledged increments",
             f"{'system':14s} {'acked ops/s':>12s} {'p50 @1k/s':>10s} {'p99 @1k/s':>10s} "
             f"{'ops ratio':>10s} {'p50 ratio':>10s}"]
    for name, m in medians.items():
        lines.append(f"{name:16s} {m['ops']:10.0f} {m['p50']:8.2f}ms {m['p99']:8.2f}ms "
                     f"{m['ops'] / base['ops']:9.2f}x {m['p50'] / base['p50']:9.3f}x")
    plain, tls = medians["ftds passive"], medians.get("ftds passive TLS")
    if tls is not None:
        lines.append(
            f"TLS cost (passive): throughput {tls['ops'] / plain['ops']:.1%} of plain; "
            f"p50 at one client {tls['p50_one_client']:.3f} ms against "
            f"{plain['p50_one_client']:.3f} ms "
            f"({(tls['p50_one_client'] - plain['p50_one_client']) * 1000:+.0f} us); "
            f"p50 at {tls['rate']:.0f}/s {tls['p50']:.2f} against {plain['p50']:.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ftds.cli import COUNT, RATE, SECONDS

    parser = argparse.ArgumentParser(prog="ftds bench core", description=__doc__)
    parser.add_argument("--repeats", type=COUNT, default=3)
    parser.add_argument("--duration", type=SECONDS, default=4.0)
    parser.add_argument("--rate", type=RATE, default=1000.0)
    parser.add_argument("--json", help="also write the medians here")
    parser.add_argument("--tls", action="store_true",
                        help="also ftds passive with mutual TLS on every link, and the p50 of "
                        "one client for both")
    args = parser.parse_args(argv)
    medians = measure(args.repeats, args.duration, args.rate, tls=args.tls)
    print()
    print(report(medians, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
