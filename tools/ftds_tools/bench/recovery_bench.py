"""Recovery timings on the embedded cluster, and PySyncObj's leader failover for comparison.

Every trial injects one fault into a running cluster with a client running and measures:
- **detection**: kill -9 of a backup -> removed from the membership (the RM's incident record);
- **crash failover**: kill -9 of the primary -> the client's first acknowledgement of a request
  sent after the kill (the same client and rule measure PySyncObj's leader kill);
- **hang failover**: SIGSTOP of the primary -> likewise (the RM waits out the lease first);
- **client gap**: the longest time between two acknowledgements around the fault;
- **relaunch -> ready**: relaunch issued -> caught up and back in the membership.
Medians (and p90) over the trials are printed with the ratio ftds / PySyncObj.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftds import ctl, local
from ftds.client import Client
from ftds.config import load_config
from ftds.rmclient import reset_budgets, rm_request

from .core_bench import PySyncObjCluster
from .loadgen import PsoConn


class Probe:
    """Acknowledged requests over time, from a few one-at-a-time senders."""

    def __init__(self) -> None:
        self.acks: list[tuple[float, float, str]] = []  # (sent, acked, by whom)
        self.stop = asyncio.Event()

    def first_after(self, t: float) -> float | None:
        times = [acked for sent, acked, _ in self.acks if sent >= t]
        return min(times) if times else None

    def handover(self, t: float, old: str) -> tuple[float, float] | None:
        """(last acknowledgement by ``old``, first by another replica) around a fault at
        ``t``: an upper bound of the failover when the fault's exact moment is unknown."""
        new = [acked for sent, acked, by in self.acks if sent >= t and by != old]
        if not new:
            return None
        first_new = min(new)
        last_old = max((acked for _, acked, by in self.acks if by == old and acked < first_new),
                       default=t)
        return last_old, first_new

    def gap_around(self, t: float, window: float = 3.0) -> float:
        """Longest time without an acknowledgement from the last one before ``t`` on."""
        times = sorted(acked for _, acked, _ in self.acks if t - window < acked <= t + window)
        before = [x for x in times if x <= t]
        if not before or len(times) == len(before):
            return float("nan")
        span = [before[-1], *(x for x in times if x > t)]
        return max(b - a for a, b in itertools.pairwise(span))


async def ftds_probe(client: Client, probe: Probe, senders: int = 8) -> None:
    async def one(i: int) -> None:
        session = client.session(f"P{os.getpid()}.{i}")
        while not probe.stop.is_set():
            sent = time.time()
            reply = await session.call({"op": "incr", "key": f"probe{i}"})
            probe.acks.append((sent, time.time(), reply.get("from", "?")))
            await asyncio.sleep(0.002)

    await asyncio.gather(*(one(i) for i in range(senders)))


async def wait_healthy(config: Any, key: bytes, timeout: float = 30) -> dict[str, Any]:
    async def healthy() -> dict[str, Any] | None:
        try:
            s = await rm_request(config, key, "status_req", timeout=1.0)
        except (OSError, TimeoutError, ConnectionError):
            return None
        if s["primary"] and not s.get("failover_pending") and \
                all(r["ready"] for r in s["replicas"].values()):
            return s
        return None
    return await ctl.wait_for(healthy, timeout, 0.02)


async def incident_of(config: Any, key: bytes, replica: str, since: float,
                      timeout: float = 20) -> dict[str, Any]:
    async def closed() -> dict[str, Any] | None:
        incidents = (await rm_request(config, key, "incidents_req"))["incidents"]
        found = [i for i in incidents if i["replica"] == replica and i["closed"]
                 and i["detected"] >= since - 0.01]
        return found[-1] if found else None
    return await ctl.wait_for(closed, timeout, 0.05)


async def ftds_trials(run_dir: Path, mode: str, trials: int, out: Any) -> dict[str, list[float]]:
    config = load_config(run_dir / "cluster.yml")
    key = config.read_key()
    results: dict[str, list[float]] = {k: [] for k in (
        "detection", "crash_failover", "crash_gap", "hang_failover", "hang_gap",
        "relaunch_ready")}
    await wait_healthy(config, key)
    client = Client(config, key, f"bench{os.getpid()}", trace=False)
    await client.start()
    await client.wait_connected(10)
    probe = Probe()
    task = asyncio.create_task(ftds_probe(client, probe))
    try:
        for kind in ("backup", "primary", "hang"):
            if kind == "hang" and mode != "passive":
                continue
            for trial in range(1, trials + 1):
                status = await wait_healthy(config, key)
                await reset_budgets(config, key)  # trials kill more often than a budget allows
                await asyncio.sleep(0.3)
                victim = status["primary"] if kind in ("primary", "hang") else \
                    next(r for r in status["replicas"] if r != status["primary"])
                pid = local.read_pid(run_dir, victim)
                assert pid is not None
                t0 = time.time()
                os.kill(pid, signal.SIGSTOP if kind == "hang" else signal.SIGKILL)
                if kind == "backup":
                    incident = await incident_of(config, key, victim, t0)
                    results["detection"].append((incident["removed"] - t0) * 1000)
                    results["relaunch_ready"].append(incident["relaunch_to_ready_ms"])
                    out(f"  {mode} backup kill {trial:2d}: removed after "
                        f"{results['detection'][-1]:6.1f} ms, relaunch->ready "
                        f"{incident['relaunch_to_ready_ms']:6.0f} ms")
                    continue
                await ctl.wait_for(lambda t=t0: probe.first_after(t + 0.001), 20, 0.005)
                first = probe.first_after(t0 + 0.001)
                assert first is not None
                failover = (first - t0) * 1000
                await asyncio.sleep(0.2)
                gap = probe.gap_around(t0) * 1000
                if kind == "hang":
                    os.kill(pid, signal.SIGCONT)
                    results["hang_failover"].append(failover)
                    results["hang_gap"].append(gap)
                else:
                    results["crash_failover"].append(failover)
                    results["crash_gap"].append(gap)
                    incident = await incident_of(config, key, victim, t0)
                    results["relaunch_ready"].append(incident["relaunch_to_ready_ms"])
                out(f"  {mode} {kind:7s} {trial:2d}: first ack by the new primary after "
                    f"{failover:7.1f} ms, client gap {gap:7.1f} ms")
                await wait_healthy(config, key)
    finally:
        probe.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await client.close()
    return results


async def pso_trial(cluster: PySyncObjCluster, out: Any, trial: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    leader = cluster.leader_port
    index = cluster.front.index(leader)
    follower = next(p for p in cluster.front if p != leader)
    _, conn = await loop.create_connection(PsoConn, "127.0.0.1", follower)
    probe = Probe()
    counter = iter(range(1, 1 << 40))

    async def sender(i: int) -> None:
        while not probe.stop.is_set():
            sent = time.time()
            try:
                value = await asyncio.wait_for(conn.call(next(counter) + (i << 41)), 2.0)
            except TimeoutError:
                continue
            if value >= 0:
                probe.acks.append((sent, time.time(), "?"))
            else:
                await asyncio.sleep(0.01)  # refused while there is no leader: try again

    tasks = [asyncio.create_task(sender(i)) for i in range(8)]
    await asyncio.sleep(1.0)
    t0 = time.time()
    cluster.procs[index].kill()
    await ctl.wait_for(lambda: probe.first_after(t0 + 0.001), 30, 0.005)
    failover = (probe.first_after(t0 + 0.001) - t0) * 1000  # type: ignore[operator]
    await asyncio.sleep(0.3)
    gap = probe.gap_around(t0) * 1000
    probe.stop.set()
    for task in tasks:
        task.cancel()
    conn.transport.close()
    out(f"  PySyncObj leader kill {trial:2d}: first ack after {failover:7.1f} ms, "
        f"client gap {gap:7.1f} ms")
    return failover, gap


def summary(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return {"median": float("nan"), "p90": float("nan"), "n": 0}
    ordered = sorted(values)
    return {"median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "n": len(ordered)}


def measure(trials: int, out: Any = print) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ftds-recovery-") as tmp:
        for mode in ("passive", "active"):
            run_dir = Path(tmp) / mode
            local.write_cluster(run_dir, 3, mode, trace={"requests": False})
            local.spawn(run_dir, "supervisor", ["local", "supervise", "--dir", str(run_dir)])
            try:
                results = asyncio.run(ftds_trials(run_dir, mode, trials, out))
            finally:
                local.stop_cluster(run_dir)
            report[mode] = {k: summary(v) for k, v in results.items() if v}
        pso = {"failover": [], "gap": []}
        work = Path(tmp) / "pso"
        for trial in range(1, trials + 1):
            with PySyncObjCluster(work, 17800) as cluster:
                failover, gap = asyncio.run(pso_trial(cluster, out, trial))
            pso["failover"].append(failover)
            pso["gap"].append(gap)
        report["pysyncobj"] = {k: summary(v) for k, v in pso.items()}
    return report


TARGETS = {"detection": 50, "crash_failover": 200, "hang_failover": 1000,
           "relaunch_ready": 1500}


def render(report: dict[str, Any], trials: int) -> str:
    pso = report["pysyncobj"]["failover"]["median"]
    lines = [f"median (p90) over {trials} trials per fault, 3 replicas on 127.0.0.1, "
             "default tunables (heartbeat 100 ms x 3, lease 500 ms)",
             f"{'measure':34s} {'passive':>18s} {'active':>18s} {'target':>8s}"]
    names = {"detection": "crash detection (kill -9 -> removed)",
             "crash_failover": "crash failover (-> first new ack)",
             "crash_gap": "client gap, crash",
             "hang_failover": "hang failover (SIGSTOP -> ack)",
             "hang_gap": "client gap, hang",
             "relaunch_ready": "relaunch -> ready, back in view"}
    for key, label in names.items():
        cells = []
        for mode in ("passive", "active"):
            s = report[mode].get(key)
            cells.append(f"{s['median']:7.1f} ({s['p90']:6.1f}) ms" if s else "-")
        target = f"<= {TARGETS[key]}" if key in TARGETS else ""
        lines.append(f"{label:34s} {cells[0]:>18s} {cells[1]:>18s} {target:>8s}")
    p = report["pysyncobj"]
    lines.append(f"{'PySyncObj leader kill -> first ack':34s} "
                 f"{p['failover']['median']:7.1f} ({p['failover']['p90']:6.1f}) ms; "
                 f"client gap {p['gap']['median']:.1f} ms")
    for mode in ("passive", "active"):
        ours = report[mode]["crash_failover"]["median"]
        lines.append(f"crash failover ratio ftds {mode} / PySyncObj: {ours / pso:.3f}x "
                     f"({pso / ours:.0f}x faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ftds.cli import COUNT

    parser = argparse.ArgumentParser(prog="ftds bench recovery", description=__doc__)
    parser.add_argument("--trials", type=COUNT, default=10)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    report = measure(args.trials)
    print()
    print(render(report, args.trials))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
