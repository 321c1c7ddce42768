"""Run simulated fault schedules: ``scripts/sim --seeds 2000 --jobs 2``.

Every seed is one run (``sim.run``). A failing seed prints its schedule, what happened and the
command that replays it exactly; ``--seed N`` replays one seed and prints its whole story.
``--fault NAME`` plants a bug (``ftds/faults.py``) and reports how many schedules it took to
find it. Exit status: 0 when every run passed (or, with ``--fault``, when the bug was found),
1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    p.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    p.add_argument("--seed", type=int, help="replay one seed and print its whole story")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: one per core)")
    p.add_argument("--mode", choices=["passive", "active"],
                   help="one replication mode (default: each seed draws one)")
    p.add_argument("--duration", type=float, default=6.0,
                   help="seconds of simulated load per run (default 6)")
    p.add_argument("--kinds", help="only these fault kinds, comma-separated (sim.schedule.KINDS; "
                   "'default' is all of them; 'default,reload,rm_disk_full' adds the opt-in kinds, "
                   "sim.schedule.OPT_IN)")
    p.add_argument("--fault", help="plant this bug (see ftds/faults.py) and hunt for it")
    p.add_argument("--stop-at-first", action="store_true", help="stop at the first failure")
    p.add_argument("--dump", help="with --seed: write every log line and operation here")
    p.add_argument("--json", help="write the summary (and the failures) to this file")
    return p.parse_args(argv)


def _caller_path(path: str) -> str:
    """A path the caller gave, relative to where it ran ``scripts/sim`` (which changes into
    tests/ before starting Python), not to tests/."""
    return os.path.join(os.environ.get("FTDS_SIM_CALLER_CWD", ""), path)


def _reexec_if_needed(args: argparse.Namespace) -> None:
    """String hashing and planted bugs are fixed at interpreter start: set them, then exec."""
    want = {"PYTHONHASHSEED": "0", "FTDS_FAULT": args.fault or ""}
    if all(os.environ.get(k, "") == v for k, v in want.items()):
        return
    os.environ.update(want)
    os.execv(sys.executable, [sys.executable, "-m", "sim", *sys.argv[1:]])


def _one(seed: int, mode: str | None, duration: float,
         kinds: list[str] | None = None) -> dict[str, Any]:
    from .run import run

    r = run(seed, mode=mode, duration=duration, kinds=kinds)
    return {"seed": r.seed, "mode": r.mode, "ok": r.ok, "why": r.why,
            "converged": r.converged, "unavailable": r.unavailable, "ops": r.ops,
            "acked": r.acked, "wall_s": r.wall_s, "virtual_s": r.virtual_s,
            "schedule": r.schedule, "events": r.events, "tail": r.tail,
            "fingerprint": r.fingerprint}


def _chunk(seeds: list[int], mode: str | None, duration: float, kinds: list[str] | None,
           stop_at_first: bool) -> list[dict[str, Any]]:
    out = []
    for seed in seeds:
        out.append(_one(seed, mode, duration, kinds))
        if stop_at_first and not out[-1]["ok"]:
            break
    return out


def _kinds(args: argparse.Namespace) -> list[str] | None:
    if not args.kinds:
        return None
    from .schedule import KINDS, OPT_IN

    kinds: list[str] = []
    for name in args.kinds.split(","):
        kinds.extend(KINDS if name == "default" else [name])
    known = {**KINDS, **OPT_IN}
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise SystemExit(f"scripts/sim: unknown fault kinds {unknown} (known: default = "
                         f"{', '.join(KINDS)}; and {', '.join(OPT_IN)})")
    return list(dict.fromkeys(kinds))


def _replay(args: argparse.Namespace, command: str) -> int:
    if args.dump:
        from pathlib import Path

        from .run import run

        full = run(args.seed, mode=args.mode, duration=args.duration, kinds=_kinds(args),
                   keep=True)
        out = Path(_caller_path(args.dump))
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.txt").write_text("\n".join(full.lines) + "\n")
        (out / "history.txt").write_text("\n".join(full.history) + "\n")
        print(f"every log line in {out}/log.txt, every operation in {out}/history.txt")
    r = _one(args.seed, args.mode, args.duration, _kinds(args))
    print("\n".join(r["schedule"]))
    print("what happened:")
    print("\n".join(r["events"]))
    print("the last log lines:")
    print("\n".join(r["tail"]))
    status = "ok" if r["ok"] else f"FAIL: {r['why']}"
    print(f"seed {r['seed']} ({r['mode']}): {status}; {r['acked']}/{r['ops']} acknowledged; "
          f"converged: {r['converged']} {r['unavailable']}; fingerprint {r['fingerprint']}")
    print(f"replay: {command}")
    return 0 if r["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    _reexec_if_needed(args)
    fault = f" --fault {args.fault}" if args.fault else ""
    mode = f" --mode {args.mode}" if args.mode else ""
    dur = f" --duration {args.duration:g}" if args.duration != 6.0 else ""
    dur += f" --kinds {args.kinds}" if args.kinds else ""
    if args.seed is not None:
        return _replay(args, f"scripts/sim --seed {args.seed}{mode}{dur}{fault}")
    if args.json:  # made now: a long run must not fail at its end for want of a directory
        os.makedirs(os.path.dirname(_caller_path(args.json)) or ".", exist_ok=True)
    seeds = list(range(args.first, args.first + args.seeds))
    jobs = max(1, min(args.jobs, len(seeds)))
    # Interleaved chunks of 25: every worker stays busy and results come back in order.
    chunks = [seeds[i:i + 25] for i in range(0, len(seeds), 25)]
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(_chunk, c, args.mode, args.duration, _kinds(args),
                               args.stop_at_first)
                   for c in chunks]
        for future in futures:
            for r in future.result():
                if not r["ok"]:
                    failures.append(r)
                    print(f"seed {r['seed']} ({r['mode']}): FAIL: {r['why']}", flush=True)
                    print(f"  replay: scripts/sim --seed {r['seed']}{mode}{dur}{fault}",
                          flush=True)
                else:  # what only a failure needs to be told: not kept for a long run
                    r = {k: v for k, v in r.items() if k not in ("schedule", "events", "tail")}
                results.append(r)
            if args.stop_at_first and failures:
                for f in futures:
                    f.cancel()
                break
            done = len(results)
            if done % 500 == 0:
                print(f"  {done} schedules, {len(failures)} failed, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
    wall = time.perf_counter() - started
    per_min = len(results) / wall * 60 if wall else 0.0
    unconverged = [r for r in results if not r["converged"]]
    summary = {
        "schedules": len(results), "failed": len(failures), "fault": args.fault,
        "first_failing_seed": min((f["seed"] for f in failures), default=None),
        "schedules_to_first_failure": (min(f["seed"] for f in failures) - args.first + 1)
        if failures else None,
        "wall_s": round(wall, 1), "schedules_per_minute": round(per_min, 1), "jobs": jobs,
        "ops": sum(r["ops"] for r in results), "acked": sum(r["acked"] for r in results),
        "simulated_s": round(sum(r["virtual_s"] for r in results), 1),
        "not_converged": len(unconverged),
        "not_converged_reasons": sorted({r["unavailable"] or "no reason given"
                                         for r in unconverged})[:10],
        # One digest of every run's fingerprint, in seed order: equal digests on two commits
        # mean every one of these schedules ran the same on both.
        "runs_digest": hashlib.sha256("".join(
            f"{r['seed']}:{r['fingerprint']}\n" for r in results).encode()).hexdigest()[:16],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(_caller_path(args.json), "w") as fh:
            json.dump({"summary": summary, "failures": failures[:20],
                       "fingerprints": {r["seed"]: r["fingerprint"] for r in results}},
                      fh, indent=2)
    if args.fault:
        return 0 if failures else 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
