"""ftds against Redis and PySyncObj, one fair run: closed-loop throughput and latency at
C = 1, 16, 128 and 512 clients, and failover after a crash and after a hang of the leader.

Systems: ftds passive, ftds active, Redis (master + 2 replicas, SET + WAIT 2), PySyncObj with
append batching off and with its defaults; three nodes each on 127.0.0.1. The systems' order
rotates between rounds; each (system, round) gets a fresh cluster, checked stable before every
load. Figures are medians over the rounds (see docs/benchmarks.md for the method and what
limits each figure).

With --replicas N (odd, 3 by default) every system gets N nodes: ftds N replicas, Redis a
master and N-1 replicas with SET + WAIT N-1 (its row is then "Redis WAIT <N-1>"; --systems
also takes "Redis WAIT" for it at any N), PySyncObj N nodes; the failover trials run N
Sentinels with a majority quorum, their Redis writers WAIT N//2 (a majority of the copies).

    scripts/bench compare            # the full run (about 12 minutes on 2 cores)
    scripts/bench compare --quick    # a short, noisy run to see that everything works
    scripts/bench compare --replicas 5 --json run/compare-5.json   # 5 nodes per system
    scripts/bench plot run/compare-*.json --out docs/bench-scaling.png   # the figures, drawn
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ftds.cli import COUNT, NON_NEGATIVE, SECONDS

from . import failover
from .stats import median, ratio, rotation, us_per_op
from .systems import (
    REPO,
    Ftds,
    NotStable,
    PySyncObj,
    Redis,
    System,
    child_env,
    ensure_redis,
    redis_name,
)

REDIS = "Redis WAIT"  # in --systems: the Redis row at any --replicas (WAIT N-1)
MAX_REPLICAS = 99  # the embedded ftds cluster's port plan holds S1..S99


def systems_for(replicas: int) -> list[str]:
    """The throughput systems with ``replicas`` nodes each, in their default order."""
    return ["ftds passive", "ftds active", redis_name(replicas), "PySyncObj batch off",
            "PySyncObj defaults"]


SYSTEMS = systems_for(3)
# "ftds passive fenced": the same cluster with tunables.fence_hung_primary (its LFD kills a hung
# primary, so a hang fails over without the lease wait); a failover row only.
FENCED = "ftds passive fenced"
FAILOVER_SYSTEMS = ["ftds passive", FENCED, "PySyncObj batch off", "Redis+Sentinel"]
CLIENTS = [1, 16, 128, 512]
# Seconds outside the load windows, measured on the 2-core machine with 3 nodes: a cluster's
# start and settle (~2.5 s), per load a driver's start, connect and drain (~1.5 s), per
# failover trial start, warm-up, failover and stop (~4 s on average). With N nodes a start is
# taken as N/3 times as long (more processes to start); the rest is left as measured with 3
# (a --quick run with 5 nodes, 3 systems and failover took 1.2 min, under this estimate's 1.5).
START_S, PER_LOAD_S, PER_TRIAL_S = 2.5, 1.5, 4.0


def make(name: str, work: Path, replicas: int = 3) -> System:
    if name.startswith("ftds"):
        return Ftds(name.split()[1], work, replicas, fenced=name == FENCED)
    if name == redis_name(replicas):
        return Redis(work, nodes=replicas)
    if name == "Redis+Sentinel":
        return Redis(work, sentinel=True, nodes=replicas)
    if name.startswith("PySyncObj"):
        return PySyncObj(work, batch=name == "PySyncObj defaults", nodes=replicas)
    raise ValueError(f"unknown system {name!r}")


def estimate(args: argparse.Namespace) -> float:
    """Seconds a run with these settings takes on this machine (the budget it is sized by)."""
    loads = args.rounds * len(args.systems) * len(args.clients)
    load = loads * (args.warmup + args.duration + PER_LOAD_S)
    starts = args.rounds * len(args.systems) * START_S * args.replicas / 3
    trials = 0 if args.no_failover else 2 * len(args.failover_systems) * args.repeats
    return load + starts + trials * (PER_TRIAL_S + args.failover_warm)


def drive(system: System, leader: Any, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.driver", "--system", system.kind,
           *system.driver_args(leader), "--clients", str(clients),
           "--warmup", str(args.warmup), "--duration", str(args.duration),
           *(f"--pid={label}={pid}" for label, pid in system.server_pids().items())]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=args.warmup + args.duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def cell(result: dict[str, Any]) -> dict[str, Any]:
    """A driver's result with the per-operation CPU figures."""
    acked = result["acked"]
    server = sum(result["server_cpu_s"].values())
    replicas = sum(v for k, v in result["server_cpu_s"].items() if k.startswith("replica:"))
    return {**result, "server_us_op": us_per_op(server, acked),
            "replica_us_op": us_per_op(replicas, acked),
            "client_us_op": us_per_op(result["client_cpu_s"], acked)}


def throughput(args: argparse.Namespace, work: Path, out: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for name in rotation(args.systems, r):
            try:
                with make(name, work, args.replicas) as system:
                    for clients in args.clients:
                        try:
                            leader = system.wait_stable()
                            row = cell(drive(system, leader, clients, args))
                        except (NotStable, RuntimeError, subprocess.TimeoutExpired,
                                ValueError) as exc:
                            row = {"error": str(exc)[:300]}
                        row.pop("system", None)  # the driver's kind; the row names the system
                        rows.append({"round": r + 1, "system": name, "clients": clients, **row})
                        out(line(rows[-1]))
            except (NotStable, RuntimeError, OSError) as exc:
                done = {row["clients"] for row in rows
                        if row["round"] == r + 1 and row["system"] == name}
                for clients in args.clients:
                    if clients not in done:
                        rows.append({"round": r + 1, "system": name, "clients": clients,
                                     "error": f"start: {str(exc)[:300]}"})
                        out(line(rows[-1]))
    return rows


def line(row: dict[str, Any]) -> str:
    head = f"  round {row['round']} {row['system']:20s} C={row['clients']:<4d}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    errors = sum(row["errors"].values())
    return (f"{head} {row['ops_s']:9.0f} ops/s  p50 {row['p50_ms']:7.2f} ms  "
            f"p99 {row['p99_ms']:7.2f} ms  server {row['server_us_op']:6.0f} us/op  "
            f"client {row['client_us_op']:5.0f} us/op" + (f"  errors {errors}" if errors else ""))


FIELDS = ("ops_s", "p50_ms", "p99_ms", "server_us_op", "replica_us_op", "client_us_op")


def medians(rows: list[dict[str, Any]], systems: list[str],
            clients: list[int]) -> dict[str, dict[int, dict[str, Any]]]:
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for name in systems:
        for c in clients:
            mine = [r for r in rows if r["system"] == name and r["clients"] == c]
            good = [r for r in mine if "error" not in r]
            errors: dict[str, int] = {}
            for r in good:
                for kind, n in r["errors"].items():
                    errors[kind] = errors.get(kind, 0) + n
            table.setdefault(name, {})[c] = {
                **{f: median([r[f] for r in good]) for f in FIELDS},
                "rounds": len(good), "failed_rounds": len(mine) - len(good), "errors": errors}
    return table


RATIOS = [("ftds passive", REDIS), ("ftds passive", "PySyncObj batch off"),
          ("ftds passive", "PySyncObj defaults"), ("ftds active", REDIS),
          ("ftds active", "PySyncObj batch off")]


def ratios(table: dict[str, dict[int, dict[str, Any]]], clients: list[int],
           replicas: int = 3) -> dict[str, dict[int, dict[str, float]]]:
    found: dict[str, dict[int, dict[str, float]]] = {}
    for ours, theirs in RATIOS:
        theirs = redis_name(replicas) if theirs == REDIS else theirs
        if ours in table and theirs in table:
            found[f"{ours} / {theirs}"] = {
                c: {f: ratio(table[ours][c][f], table[theirs][c][f])
                    for f in ("ops_s", "p50_ms", "server_us_op")} for c in clients}
    return found


def failovers(args: argparse.Namespace, work: Path, out: Any) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for fault in ("crash", "hang"):
            for name in rotation(args.failover_systems, rep):
                try:
                    with make(name, work, args.replicas) as system:
                        result = asyncio.run(failover.trial(system, fault, args.failover_warm))
                except (NotStable, RuntimeError, OSError) as exc:
                    result = {"system": name, "fault": fault, "ms": math.nan,
                              "error": str(exc)[:300]}
                result["repeat"] = rep + 1
                trials.append(result)
                note = f"  ({result['error']})" if "error" in result else ""
                out(f"  failover {rep + 1} {fault:5s} {name:20s} {result['ms']:8.1f} ms{note}")
    return trials


def failover_medians(trials: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in systems:
        for fault in ("crash", "hang"):
            values = [t["ms"] for t in trials if t["system"] == name and t["fault"] == fault]
            table.setdefault(name, {})[fault] = {
                "median_ms": median(values), "trials": values}
    for ours in ("ftds passive", FENCED):
        ftds = table.get(ours)
        for peer in ("PySyncObj batch off", "Redis+Sentinel"):
            if ftds and peer in table:
                for fault in ("crash", "hang"):
                    table.setdefault(f"{ours} / {peer}", {})[fault] = ratio(
                        ftds[fault]["median_ms"], table[peer][fault]["median_ms"])
    return table


def fmt(value: float, digits: int = 0, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    n = report.get("replicas", 3)
    lines = [f"ftds vs Redis vs PySyncObj, {n} nodes each on 127.0.0.1, {cfg['cores']} cores; "
             f"median of {cfg['rounds']} rotated rounds of {cfg['duration']:g} s "
             f"(+{cfg['warmup']:g} s warm-up) per system and C"
             + ("  [QUICK: short and noisy]" if cfg["quick"] else ""),
             f"replicas: {n} (ftds {n} replicas; Redis a master and {n - 1} replicas, "
             f"WAIT {n - 1}; PySyncObj {n} nodes)", "",
             f"{'system':20s} {'C':>4s} {'ops/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
             f"{'server us/op':>12s} {'client us/op':>12s} {'errors':>7s}"]
    for name, by_c in report["throughput"].items():
        for c, m in by_c.items():
            errs = sum(m["errors"].values()) + m["failed_rounds"]
            lines.append(f"{name:20s} {c:>4} {fmt(m['ops_s']):>9s} {fmt(m['p50_ms'], 2):>8s} "
                         f"{fmt(m['p99_ms'], 2):>8s} {fmt(m['server_us_op']):>12s} "
                         f"{fmt(m['client_us_op']):>12s} {errs:>7d}")
    lines += ["", "ratios (ops/s; p50; server CPU per op), medians against medians:"]
    for pair, by_c in report["ratios"].items():
        cells = "  ".join(f"C={c}: {fmt(r['ops_s'], 2, 'x')}; {fmt(r['p50_ms'], 2, 'x')}; "
                          f"{fmt(r['server_us_op'], 2, 'x')}" for c, r in by_c.items())
        lines.append(f"  {pair:40s} {cells}")
    if report.get("failover"):
        lines += ["", "failover: fault -> first write acknowledged by the new leader, "
                  f"median of {cfg['repeats']} (ms)",
                  f"{'system':20s} {'crash (kill -9)':>16s} {'hang (SIGSTOP)':>16s}"]
        for name, faults in report["failover"].items():
            if "/" in name:
                lines.append(f"{name:40s} crash {fmt(faults['crash'], 3, 'x')}  "
                             f"hang {fmt(faults['hang'], 3, 'x')}")
            else:
                lines.append(f"{name:20s} {fmt(faults['crash']['median_ms'], 1):>16s} "
                             f"{fmt(faults['hang']['median_ms'], 1):>16s}")
        lines += ["", "tunables:"] + [f"  {k}: {v}" for k, v in report["tunables"].items()]
    lines.append(f"\nelapsed {report['elapsed_s'] / 60:.1f} min")
    return "\n".join(lines)


def clean(value: Any) -> Any:
    """JSON without NaN (null instead) and with string keys."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    def redis_version() -> str:
        try:
            return subprocess.run(["redis-server", "--version"], capture_output=True,
                                  text=True).stdout.strip()
        except OSError:
            return "not installed"

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"python": platform.python_version(), "pysyncobj": version("pysyncobj"),
            "uvloop": version("uvloop"), "redis": redis_version(), "ftds_commit": commit,
            "loadavg_start": os.getloadavg()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=COUNT, default=3)
    parser.add_argument("--duration", type=SECONDS, default=8.0,
                        help="seconds of each load window (default 8: the 3-node run fits 15 min)")
    parser.add_argument("--warmup", type=NON_NEGATIVE, default=1.0)
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                        help="comma-separated concurrency levels")
    parser.add_argument("--replicas", type=int, default=3, metavar="N",
                        help="nodes per system, odd, 3 to 99 (default 3): ftds replicas, "
                             "Redis master + N-1 replicas (WAIT N-1, N Sentinels for "
                             "failover), PySyncObj nodes")
    parser.add_argument("--systems", default=None,
                        help="comma-separated, of: " + ", ".join(systems_for(3)).replace(
                            redis_name(3), "Redis WAIT <N-1> (or 'Redis WAIT' at any N)")
                        + " (default: all)")
    parser.add_argument("--repeats", type=COUNT, default=3, help="failover trials per fault")
    parser.add_argument("--failover-systems", default=",".join(FAILOVER_SYSTEMS))
    parser.add_argument("--failover-warm", type=NON_NEGATIVE, default=1.0,
                        help="seconds of probe writes before each fault")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 s, 1 failover trial per fault: works, not figures")
    parser.add_argument("--json", default=str(REPO / "run" / "bench-compare.json"),
                        help="the report's JSON (its text table goes beside it, .txt)")
    args = parser.parse_args(argv)
    n = args.replicas
    if n < 3 or n % 2 == 0 or n > MAX_REPLICAS:
        parser.error(f"--replicas must be odd, from 3 to {MAX_REPLICAS} (got {n})")
    if args.systems is None:
        args.systems = ",".join(systems_for(n))
    if args.quick:
        args.rounds, args.duration, args.warmup, args.repeats = 1, 2.0, 0.5, 1
        args.failover_warm = 0.5
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        parser.error(f"argument --clients: must be counts, comma-separated (got {args.clients!r})")
    if not args.clients or min(args.clients) < 1:
        parser.error(f"argument --clients: must be counts >= 1 (got {args.clients})")
    args.systems = [redis_name(n) if s.strip() == REDIS else s.strip()
                    for s in args.systems.split(",") if s.strip()]
    args.failover_systems = [s.strip() for s in args.failover_systems.split(",") if s.strip()]
    if args.no_throughput:
        args.systems = []
    unknown = [s for s in args.systems + args.failover_systems
               if s not in systems_for(n) + FAILOVER_SYSTEMS]
    if unknown:
        hint = (f" (with --replicas {n} the Redis row is {redis_name(n)!r}, or {REDIS!r})"
                if any(s.startswith(REDIS) for s in unknown) else "")
        parser.error(f"unknown system(s): {', '.join(unknown)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if any(s.startswith("Redis") for s in args.systems + args.failover_systems):
        ensure_redis()  # before anything starts: a missing Redis stops the run with a message
    started = time.monotonic()
    print(f"estimated {estimate(args) / 60:.1f} min", flush=True)

    def out(text: str) -> None:
        print(text, flush=True)

    report: dict[str, Any] = {
        "replicas": args.replicas,
        "config": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
                   "clients": args.clients, "systems": args.systems, "repeats": args.repeats,
                   "quick": args.quick, "cores": os.cpu_count()},
        "environment": environment(), "tunables": failover.tunables(args.replicas)}
    with tempfile.TemporaryDirectory(prefix="ftds-compare-") as tmp:
        work = Path(tmp)
        rows = throughput(args, work, out) if args.systems else []
        table = medians(rows, args.systems, args.clients)
        report.update(throughput=table, ratios=ratios(table, args.clients, args.replicas),
                      rows=rows)
        if not args.no_failover:
            trials = failovers(args, work, out)
            report.update(failover=failover_medians(trials, args.failover_systems),
                          failover_trials=trials)
    report["elapsed_s"] = time.monotonic() - started
    report["environment"]["loadavg_end"] = os.getloadavg()
    text = render(report)
    print()
    print(text)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(report), indent=1, allow_nan=False) + "\n")
    path.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwritten: {path} and {path.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
