"""Recovery on the lab (real systemd hosts), and how long the playbook takes.

- ``systemctl stop`` of a replica -> back in the membership and ready (the RM restarts it over SSH);
- power cut of the primary's host -> a new primary acknowledging (first acknowledgement, seen by
  a client on the controller, of a request sent after the cut);
- with ``--playbook``: a fresh lab, the first deploy, and an idempotent re-run, timed.
Medians over ``--trials`` (>= 5).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftds.client import Client
from ftds.config import load_config
from ftds.rmclient import reset_budgets

from ..labenv import REPO, Lab
from .recovery_bench import Probe, ftds_probe, incident_of, wait_healthy


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


async def trials(lab: Lab, config_path: Path, n: int, out: Any) -> dict[str, list[float]]:
    config = load_config(config_path)
    key = config.read_key()
    results: dict[str, list[float]] = {"stop_to_ready": [], "stop_detect": [],
                                       "power_cut_failover": [], "power_cut_gap": []}
    client = Client(config, key, f"labbench{time.time_ns() % 100000}", trace=False)
    await client.start()
    await client.wait_connected(20)
    probe = Probe()
    task = asyncio.create_task(ftds_probe(client, probe, senders=6))
    try:
        for trial in range(1, n + 1):
            status = await wait_healthy(config, key, 90)
            await reset_budgets(config, key)  # the trials kill more often than a budget allows
            victim = next(r for r in sorted(status["replicas"]) if r != status["primary"])
            host = lab.host_of(victim)
            t0 = time.time()
            lab.ssh(host, f"systemctl stop ftds-replica@{victim}.service")
            incident = await incident_of(config, key, victim, t0, timeout=60)
            results["stop_to_ready"].append((incident["ready"] - t0) * 1000)
            results["stop_detect"].append((incident["removed"] - t0) * 1000)
            out(f"  systemctl stop {victim} {trial}: removed after "
                f"{results['stop_detect'][-1]:6.0f} ms, back and ready after "
                f"{results['stop_to_ready'][-1]:6.0f} ms")
        for trial in range(1, n + 1):
            status = await wait_healthy(config, key, 120)
            await reset_budgets(config, key)
            await asyncio.sleep(0.5)
            primary = status["primary"]
            host = lab.host_of(primary)
            t0 = time.time()
            await asyncio.to_thread(lab.lab, "crash", host)
            crashed = time.time()  # the host is off by now (when exactly, only the lab knows)
            handover = await _handover(probe, t0, primary)
            # From the old primary's last acknowledgement to the new one's first: an upper
            # bound of the failover, since the cut came somewhere between t0 and `crashed`.
            results["power_cut_failover"].append((handover[1] - handover[0]) * 1000)
            await asyncio.sleep(0.3)
            results["power_cut_gap"].append(probe.gap_around(crashed) * 1000)
            out(f"  power cut of {host} ({primary}) {trial}: first new ack after "
                f"{results['power_cut_failover'][-1]:6.0f} ms, client gap "
                f"{results['power_cut_gap'][-1]:6.0f} ms")
            await asyncio.to_thread(lab.lab, "start", host)
    finally:
        probe.stop.set()
        task.cancel()
        await client.close()
    return results


async def _handover(probe: Probe, t0: float, old: str,
                    timeout: float = 60) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while (found := probe.handover(t0, old)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no acknowledgement by a new primary after the fault")
        await asyncio.sleep(0.005)
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ftds bench lab", description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--playbook", action="store_true",
                        help="also time a fresh lab's first deploy and an idempotent re-run "
                             "(recreates the lab)")
    parser.add_argument("--reruns", type=int, default=3,
                        help="with --playbook: repeats of each timed re-run (default 3)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    if args.playbook:
        subprocess.run([str(REPO / "scripts" / "lab"), "down"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        subprocess.run([str(REPO / "scripts" / "lab"), "up", "5"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        deploy = str(REPO / "scripts" / "deploy")
        first = timed([deploy])
        # medians over repeats: this machine is noisy
        reruns = [timed([deploy]) for _ in range(args.reruns)]
        configure = [timed([deploy, "--tags", "ftds_configure"]) for _ in range(args.reruns)]
        rerun, configure_only = statistics.median(reruns), statistics.median(configure)
        report["playbook"] = {"first_deploy_s": round(first, 1), "rerun_s": round(rerun, 1),
                              "configure_only_s": round(configure_only, 1),
                              "reruns": args.reruns}
        print(f"  playbook on 5 hosts: first deploy {first:.1f}s, idempotent re-run "
              f"{rerun:.1f}s (target <= 20), --tags ftds_configure {configure_only:.1f}s "
              f"(target <= 10), medians of {args.reruns}")
    lab = Lab()
    with tempfile.TemporaryDirectory(prefix="ftds-labbench-") as tmp:
        path = lab.fetch_cluster(Path(tmp))
        results = asyncio.run(trials(lab, path, args.trials, print))
        config = load_config(path)
        asyncio.run(wait_healthy(config, config.read_key(), 120))
    for name, values in results.items():
        report[name] = {"median_ms": round(statistics.median(values), 1),
                        "max_ms": round(max(values), 1), "n": len(values)}
    print()
    report["hosts"], report["replicas"] = len(lab.addresses), len(lab.replica_hosts)
    print(f"lab, {len(lab.addresses)} hosts, {len(lab.replica_hosts)} replicas, median over "
          f"{args.trials} trials (target):")
    print(f"  systemctl stop of a replica -> back and ready: "
          f"{report['stop_to_ready']['median_ms']:.0f} ms (<= 2000)")
    print(f"  power cut of the primary host -> new primary acknowledging (last ack of the old "
          f"to first of the new): "
          f"{report['power_cut_failover']['median_ms']:.0f} ms (<= 1000); client gap "
          f"{report['power_cut_gap']['median_ms']:.0f} ms")
    if "playbook" in report:
        p = report["playbook"]
        print(f"  playbook: first deploy {p['first_deploy_s']}s, re-run {p['rerun_s']}s, "
              f"configure only {p['configure_only_s']}s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
