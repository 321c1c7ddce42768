"""The course's Milestone 5 demo on the embedded cluster: three faults, clients running.

Bootstrapping -> steady state v1 (S1..S3 added) -> v2 (C1..C3 running) -> first fault injected ->
recovered -> second fault injected and recovered automatically -> third fault likewise. The
clients keep running throughout; at the end every acknowledged increment is checked against the
replicas' state, and the incidents table shows how long each recovery took.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ftds import ctl, local
from ftds.client import Client
from ftds.config import ClusterConfig, load_config
from ftds.rmclient import rm_request
from ftds.status import incidents_text, status_text

log = logging.getLogger(__name__)


class LogTail:
    """New lines of the management daemons' logs since the last look (GFD/RM decisions)."""

    def __init__(self, run_dir: Path, names: tuple[str, ...] = ("GFD", "RM")) -> None:
        self.paths = [run_dir / "logs" / f"{n}.log" for n in names]
        self.offsets = {p: p.stat().st_size if p.exists() else 0 for p in self.paths}

    def new_lines(self, needles: tuple[str, ...]) -> list[str]:
        lines = []
        for path in self.paths:
            if not path.exists():
                continue
            with open(path) as fh:
                fh.seek(self.offsets[path])
                for line in fh:
                    if any(n in line for n in needles):
                        lines.append(line.rstrip())
                self.offsets[path] = fh.tell()
        return sorted(lines)


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


async def _status(config: ClusterConfig, key: bytes) -> dict[str, Any] | None:
    try:
        return await rm_request(config, key, "status_req", timeout=2.0)
    except (OSError, TimeoutError, ConnectionError):
        return None


async def wait_healthy(config: ClusterConfig, key: bytes, timeout: float = 30) -> dict[str, Any]:
    async def healthy() -> dict[str, Any] | None:
        s = await _status(config, key)
        if s and s["primary"] and not s.get("failover_pending") and \
                all(r["ready"] for r in s["replicas"].values()):
            return s
        return None

    return await ctl.wait_for(healthy, timeout, 0.05)


async def client_loop(client: Client, names: list[str], stop: asyncio.Event,
                      acked: Counter[str], interval: float) -> None:
    async def one(name: str) -> None:
        session = client.session(name)
        while not stop.is_set():
            reply = await session.call({"op": "incr", "key": f"counter_{name}"})
            if reply["res"].get("ok"):
                acked[f"counter_{name}"] += 1
            await asyncio.sleep(interval)

    await asyncio.gather(*(one(n) for n in names))


async def run_demo(run_dir: Path, faults: int = 3, pause: float = 3.0,
                   rate: float = 2.0) -> int:
    config = load_config(run_dir / "cluster.yml")
    key = config.read_key()
    tail = LogTail(run_dir)
    needles = ("members", "RM: ", "GFD: ", "LFD")

    banner("Bootstrapping / steady state v1: replicas added")
    status = await wait_healthy(config, key)
    print(status_text(status))
    for line in tail.new_lines(needles)[-8:]:
        print("  " + line)

    banner("Steady state v2: clients C1, C2, C3 running")
    client = Client(config, key, "C1", trace=True)
    await client.start()
    await client.wait_connected(10)
    stop = asyncio.Event()
    acked: Counter[str] = Counter()
    clients = asyncio.create_task(client_loop(client, ["C1", "C2", "C3"], stop, acked,
                                              1.0 / rate))
    await asyncio.sleep(pause)

    for n in range(1, faults + 1):
        status = await wait_healthy(config, key)
        victim = status["primary"] if n != 2 else \
            next(r for r in status["replicas"] if r != status["primary"])
        pid = local.read_pid(run_dir, victim)
        what = "primary" if victim == status["primary"] else "backup"
        if config.mode == "active" and what == "primary":
            what = "sequencer"
        banner(f"Fault {n}: kill -9 of {victim} (the {what}, pid {pid})")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        await asyncio.sleep(0.2)
        status = await wait_healthy(config, key, 30)
        for line in tail.new_lines(needles):
            print("  " + line)
        banner(f"Fault {n} recovered automatically in {time.monotonic() - started:.2f}s")
        print(status_text(status))
        await asyncio.sleep(pause)

    stop.set()
    await clients
    await client.close()
    banner("Check: every acknowledged increment is in the state, exactly once")
    checker = Client(config, key, "checker", trace=False)
    await checker.start()
    await checker.wait_connected(10, count=1)
    ok = True
    for counter, count in sorted(acked.items()):
        value = (await checker.call({"op": "get", "key": counter}))["res"]["value"]
        verdict = "ok" if value == count else "MISMATCH"
        ok &= value == count
        print(f"  {counter}: {count} acknowledged, value {value}: {verdict}")
    await checker.close()
    banner("Incidents (ftds incidents)")
    print(incidents_text((await rm_request(config, key, "incidents_req"))["incidents"]))
    return 0 if ok else 1


def demo(run_dir: Path, mode: str, faults: int) -> int:
    from ftds.log import setup_logging

    setup_logging("auto")
    if local.read_pid(run_dir, "supervisor") is None:
        banner(f"Starting a local {mode} cluster in {run_dir}")
        path = local.write_cluster(run_dir, 3, mode)
        local.forget_previous_cluster(run_dir)
        local.spawn(run_dir, "supervisor", ["local", "supervise", "--dir", str(run_dir)])
        print(f"  config {path}; logs in {run_dir}/logs/")
    try:
        import uvloop
        code = uvloop.run(run_demo(run_dir, faults))
    except ImportError:  # pragma: no cover
        code = asyncio.run(run_demo(run_dir, faults))
    print(f"\nThe cluster keeps running: ftds status --config {run_dir}/cluster.yml; "
          f"stop it with: ftds local down --dir {run_dir}")
    return code
