"""Recovery on the lab (real systemd hosts), and how long the playbook takes.

- ``systemctl stop`` of a replica -> back in the membership and ready (the RM restarts it over SSH);
- power cut of the primary's host -> a new primary acknowledging (first acknowledgement, seen by
  a client on the controller, of a request sent after the cut);
- with ``--playbook``: a fresh lab, the first deploy, and an idempotent re-run, timed;
- with ``--load C1,C2,...``: closed-loop throughput and latency (``bench/driver.py``, run on the
  controller through the client library) at each client count, ``--load-rounds`` rounds of
  ``--load-duration`` seconds, each once the cluster is healthy; ``--trials 0`` skips the
  recovery trials (load only).
Medians over ``--trials`` (>= 5 for figures; 0 for none, with ``--load`` or ``--playbook``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftds.cli import COUNT, SECONDS
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


LOAD_WARMUP_S = 1.0
DRIVER_SLACK_S = 60.0  # past warm-up + duration: the driver's start, connect and drain


def client_counts(text: str) -> list[int]:
    """``--load``: comma-separated positive client counts, each once."""
    counts: list[int] = []
    for item in text.split(","):
        try:
            count = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: client counts are positive integers, comma-separated "
                "(e.g. 1,16,128)") from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: a client count must be >= 1 "
                                             f"(got {count})")
        if count in counts:
            raise argparse.ArgumentTypeError(f"{text!r}: client count {count} given twice")
        counts.append(count)
    return counts


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(kept) if kept else None


def load_cell(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One client count's rounds -> its figures. A round is the driver's JSON output, or
    ``{"error": ..., "stderr": ...}`` for a driver that failed, timed out or never ran (cluster
    not healthy). Medians are over the successful rounds (``rounds``; None when there is no
    value); errors are summed by kind over them; ``failures`` keeps each failed round's error
    and stderr tail."""
    good = [r for r in rounds if "error" not in r]
    errors: dict[str, int] = {}
    for r in good:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "ops_s": _median([r["ops_s"] for r in good]),
        "p50_ms": _median([r["p50_ms"] for r in good]),
        "p99_ms": _median([r["p99_ms"] for r in good]),
        "client_us_op": _median([r["client_cpu_s"] * 1e6 / r["acked"] for r in good
                                 if r["acked"]]),
        "errors": errors,
        "unfinished": sum(r.get("unfinished", 0) for r in good),
        "rounds": len(good),
        "failed_rounds": len(rounds) - len(good),
        "failures": [{k: r[k] for k in ("error", "stderr") if k in r}
                     for r in rounds if "error" in r],
    }


def _tail(stream: str | bytes | None, limit: int = 800) -> str:
    if isinstance(stream, bytes):  # TimeoutExpired keeps bytes whatever text= said
        stream = stream.decode(errors="replace")
    return (stream or "").strip()[-limit:]


def drive(config_path: Path, clients: int, duration: float,
          warmup: float = LOAD_WARMUP_S) -> dict[str, Any]:
    """One closed-loop run of ``bench/driver.py`` (from the checkout, as a subprocess: tools do
    not import bench/) against the cluster file. Its JSON output, or ``{"error", "stderr"}``
    when it fails, times out or prints no JSON: never an exception."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    cmd = [sys.executable, "-m", "bench.driver", "--system", "ftds",
           "--config", str(config_path), "--clients", str(clients),
           "--warmup", f"{warmup:g}", "--duration", f"{duration:g}"]
    timeout = duration + DRIVER_SLACK_S
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"driver timed out after {timeout:g} s", "stderr": _tail(exc.stderr)}
    except OSError as exc:
        return {"error": f"driver did not start: {exc}", "stderr": ""}
    if done.returncode != 0:
        return {"error": f"driver exited {done.returncode}", "stderr": _tail(done.stderr)}
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return {"error": "driver printed no JSON",
                "stderr": _tail(done.stderr) or _tail(done.stdout)}
    if not isinstance(result, dict) or not {"ops_s", "p50_ms", "p99_ms", "errors", "acked",
                                            "client_cpu_s"} <= result.keys():
        return {"error": "driver output lacks the expected figures",
                "stderr": _tail(done.stdout)}
    return result


def load_runs(config_path: Path, counts: list[int], rounds: int, duration: float,
              out: Any) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds over ``counts`` (in the order given), each run once the cluster is
    healthy; per client count (as str), what ``load_cell`` makes of its rounds."""
    config = load_config(config_path)
    key = config.read_key()
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    for r in range(1, rounds + 1):
        for clients in counts:
            try:
                asyncio.run(wait_healthy(config, key, 120))
            except TimeoutError:
                result: dict[str, Any] = {"error": "cluster not healthy within 120 s",
                                          "stderr": ""}
            else:
                result = drive(config_path, clients, duration)
            runs[clients].append(result)
            head = f"  load round {r} C={clients:<4d}"
            if "error" in result:
                out(f"{head} FAILED: {result['error']}"
                    + (f": {result['stderr'][-200:]}" if result["stderr"] else ""))
            else:
                p50, p99 = _fmt(result["p50_ms"], 2), _fmt(result["p99_ms"], 2)
                errors = sum(result["errors"].values())
                out(f"{head} {result['ops_s']:9.0f} ops/s  p50 {p50:>7s} ms  "
                    f"p99 {p99:>7s} ms" + (f"  errors {errors}" if errors else ""))
    return {str(c): load_cell(runs[c]) for c in counts}


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def load_table(load: dict[str, dict[str, Any]], hosts: int, replicas: int, rounds: int,
               duration: float) -> list[str]:
    lines = [f"closed-loop load on the lab, {hosts} hosts, {replicas} replicas, driver on the "
             f"controller; median of {rounds} rounds of {duration:g} s "
             f"(+{LOAD_WARMUP_S:g} s warm-up):",
             f"{'C':>6s} {'ops/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}"]
    for c, m in load.items():
        note = (f"  ({m['failed_rounds']} of {m['rounds'] + m['failed_rounds']} rounds failed)"
                if m["failed_rounds"] else "")
        lines.append(f"{c:>6s} {_fmt(m['ops_s']):>9s} {_fmt(m['p50_ms'], 2):>8s} "
                     f"{_fmt(m['p99_ms'], 2):>8s} {sum(m['errors'].values()):>7d}{note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftds bench lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5,
                        help="recovery trials of each kind (default 5; 0: none, with --load or "
                             "--playbook)")
    parser.add_argument("--playbook", action="store_true",
                        help="also time a fresh lab's first deploy and an idempotent re-run "
                             "(recreates the lab)")
    parser.add_argument("--reruns", type=COUNT, default=3,
                        help="with --playbook: repeats of each timed re-run (default 3)")
    parser.add_argument("--load", type=client_counts, metavar="C1,C2,...",
                        help="closed-loop load at these client counts (e.g. 1,16,128), after "
                             "the recovery trials; the driver runs on this machine")
    parser.add_argument("--load-rounds", type=COUNT, default=3, metavar="R",
                        help="with --load: rounds over the client counts (default 3)")
    parser.add_argument("--load-duration", type=SECONDS, default=5.0, metavar="D",
                        help="with --load: seconds of each measured window, after 1 s of "
                             "warm-up (default 5)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.trials < 0:
        parser.error(f"--trials must be >= 0 (got {args.trials})")
    if args.trials == 0 and not args.load and not args.playbook:
        parser.error("--trials 0 runs no recovery trials and neither --load nor --playbook "
                     "was given: nothing to do")
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
        results = asyncio.run(trials(lab, path, args.trials, print)) if args.trials else {}
        config = load_config(path)
        asyncio.run(wait_healthy(config, config.read_key(), 120))
        if args.load:
            report["load_settings"] = {"clients": args.load, "rounds": args.load_rounds,
                                       "duration_s": args.load_duration,
                                       "warmup_s": LOAD_WARMUP_S}
            report["load"] = load_runs(path, args.load, args.load_rounds, args.load_duration,
                                       print)
    for name, values in results.items():
        report[name] = {"median_ms": round(statistics.median(values), 1),
                        "max_ms": round(max(values), 1), "n": len(values)}
    print()
    report["hosts"], report["replicas"] = len(lab.addresses), len(lab.replica_hosts)
    if results:
        print(f"lab, {len(lab.addresses)} hosts, {len(lab.replica_hosts)} replicas, median "
              f"over {args.trials} trials (target):")
        print(f"  systemctl stop of a replica -> back and ready: "
              f"{report['stop_to_ready']['median_ms']:.0f} ms (<= 2000)")
        print(f"  power cut of the primary host -> new primary acknowledging (last ack of the "
              f"old to first of the new): "
              f"{report['power_cut_failover']['median_ms']:.0f} ms (<= 1000); client gap "
              f"{report['power_cut_gap']['median_ms']:.0f} ms")
    if "playbook" in report:
        p = report["playbook"]
        print(f"  playbook: first deploy {p['first_deploy_s']}s, re-run {p['rerun_s']}s, "
              f"configure only {p['configure_only_s']}s")
    if "load" in report:
        if results or "playbook" in report:
            print()
        print("\n".join(load_table(report["load"], report["hosts"], report["replicas"],
                                   args.load_rounds, args.load_duration)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
