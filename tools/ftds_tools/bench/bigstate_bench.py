"""Big state: what a checkpoint and a newborn's catch-up cost when the store is large.

Two parts, medians over repeats:
- **in process**, per store size: the primary's snapshot (with its digest), encoding the state
  into frames of ``max_frame/2``, and the receiver's decoding and joining, digest check and
  install. These run on a replica's event loop, so each is also how long that loop is busy;
- **on the embedded cluster**: a store of ``--mib`` filled through clients, then kill -9 of a
  backup; relaunch -> ready (the RM's incident) is the newborn's catch-up end to end, with the
  replicas' logs telling whether a loop stalled past failure detection meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftds import local
from ftds.client import Client
from ftds.config import load_config
from ftds.replica.transfer import CheckpointParts, PartsCollector
from ftds.rmclient import rm_request
from ftds.statemachine import StateMachine, state_digest, verify_checkpoint
from ftds.wire import decode_body

VALUE_BYTES = 4000


def in_process(mib: int, repeats: int, max_frame: int) -> dict[str, float]:
    keys = mib * 1024 * 1024 // VALUE_BYTES
    sm = StateMachine()
    value = "v" * VALUE_BYTES
    for n in range(1, keys + 1):
        sm.apply({"s": n, "e": 1, "c": f"C{n % 64}", "r": n // 64 + 1,
                  "op": {"op": "put", "key": f"key{n:08d}", "value": value}})
    timings: dict[str, list[float]] = {k: [] for k in (
        "snapshot_ms", "encode_ms", "decode_join_ms", "verify_ms", "install_ms",
        "full_digest_ms", "periodic_digest_ms", "longest_part_ms", "longest_receive_ms")}
    frames = 0
    seq = keys
    for _ in range(repeats):
        t = time.perf_counter()
        state_digest(sm.kv, sm.clients)  # from scratch: what a digest of everything costs
        timings["full_digest_ms"].append((time.perf_counter() - t) * 1000)
        # A periodic checkpoint's digest: 1,000 writes since the last one (kept sums).
        sm.digest()
        for n in range(1000):
            seq += 1
            sm.apply({"s": seq, "e": 1, "c": f"C{n % 64}", "r": seq // 64 + 1,
                      "op": {"op": "put", "key": f"key{n * 37 % keys:08d}", "value": value}})
        t = time.perf_counter()
        sm.digest()
        timings["periodic_digest_ms"].append((time.perf_counter() - t) * 1000)
        t0 = time.perf_counter()
        cp = sm.snapshot(1, copy=True)  # what a catch-up sends: shallow copies
        t1 = time.perf_counter()
        bodies, step = [], time.perf_counter()
        for body in CheckpointParts(cp, "catchup", {"commit": sm.seq}, "S1", 1, max_frame // 2):
            bodies.append(body)  # the loop runs between two bodies: the longest is its stall
            now = time.perf_counter()
            timings["longest_part_ms"].append((now - step) * 1000)
            step = now
        t2 = time.perf_counter()
        collector = PartsCollector()
        for body in bodies[:-1]:  # one part per turn of the receiver's loop
            step = time.perf_counter()
            collector.add(decode_body(body))
            timings["longest_receive_ms"].append((time.perf_counter() - step) * 1000)
        whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
        t3 = time.perf_counter()
        problem, sums = verify_checkpoint(whole, collector.last_sums)  # hashed as parts came
        assert problem is None
        t4 = time.perf_counter()
        StateMachine().install(whole, sums)
        t5 = time.perf_counter()
        frames = len(bodies)
        for name, (a, b) in zip(list(timings)[:5],
                                ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True):
            timings[name].append((b - a) * 1000)
    out = {name: statistics.median(v) for name, v in timings.items()}
    out["longest_part_ms"] = max(timings["longest_part_ms"])
    out["longest_receive_ms"] = max(timings["longest_receive_ms"])
    out.update(keys=keys, frames=frames, mib=mib)
    return out


async def fill(config_path: Path, mib: int, sessions: int = 32) -> float:
    config = load_config(config_path)
    client = Client(config, config.read_key(), "bigfill", trace=False)
    await client.start()
    keys = mib * 1024 * 1024 // VALUE_BYTES
    value = "v" * VALUE_BYTES
    started = time.perf_counter()
    try:
        await client.wait_connected(20)

        async def writer(k: int) -> None:
            session = client.session(f"bigfill-{k}")
            for n in range(k, keys, sessions):
                reply = await asyncio.wait_for(
                    session.call({"op": "put", "key": f"key{n:08d}", "value": value}), 60)
                assert reply["res"]["ok"], reply

        await asyncio.gather(*(writer(k) for k in range(sessions)))
    finally:
        await client.close()
    return time.perf_counter() - started


def on_cluster(mib: int, misses: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ftds-bigstate-") as tmp:
        run_dir = Path(tmp)
        path = local.write_cluster(run_dir, 3, trace={"requests": False},
                                   tunables={"heartbeat_misses": misses,
                                             "checkpoint_interval": 5.0})
        config = load_config(path)
        key = config.read_key()
        local.spawn(run_dir, "supervisor", ["local", "supervise", "--dir", str(run_dir)])
        try:
            status = wait_status(config, key, lambda s: s["primary"] and all(
                r["ready"] for r in s["replicas"].values()), 60)
            fill_s = asyncio.run(fill(path, mib))
            primary = status["primary"]
            victim = next(r for r in config.replica_ids if r != primary)
            killed_at = time.time()
            pid = local.read_pid(run_dir, victim)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            def closed(s: dict[str, Any]) -> bool:
                return s["replicas"][victim]["ready"] and s["replicas"][victim]["pid"] != pid

            end = wait_status(config, key, closed, 300)
            incidents = asyncio.run(rm_request(config, key, "incidents_req"))["incidents"]
            mine = [i for i in incidents
                    if i["replica"] == victim and i["detected"] >= killed_at - 1]
            logs = "".join(p.read_text() for p in (run_dir / "logs").glob("*.log"))
            return {"mib": mib, "fill_s": round(fill_s, 1), "epoch_after": end["epoch"],
                    "failovers": end["epoch"] - status["epoch"],
                    "relaunch_to_ready_ms": mine[-1]["relaunch_to_ready_ms"] if mine else None,
                    "heartbeat_misses": misses,
                    "hang_reports": logs.count("no heartbeat reply"),
                    "long_steps": logs.count("held the loop"),
                    "catchup_frames": logs.count("catch-up:")}
        finally:
            local.stop_cluster(run_dir)


def wait_status(config: Any, key: bytes, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = asyncio.run(rm_request(config, key, "status_req", timeout=5))
            if done(status):
                return status
        except (OSError, TimeoutError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not get there in time")
        time.sleep(0.2)


def mib_sizes(text: str) -> list[int]:
    """``--sizes``: comma-separated store sizes in MiB, each >= 1."""
    import argparse

    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be sizes in MiB, comma-separated (got {text!r})"
                                         ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be sizes of at least 1 MiB (got {text!r})")
    return sizes


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ftds.cli import COUNT

    parser = argparse.ArgumentParser(prog="ftds bench bigstate", description=__doc__)
    parser.add_argument("--sizes", type=mib_sizes, default="50,100,200",
                        help="store sizes in MiB, in process")
    parser.add_argument("--repeats", type=COUNT, default=3, help="repeats per size (median)")
    parser.add_argument("--mib", type=COUNT, default=200, help="store size on the cluster")
    parser.add_argument("--misses", type=COUNT, default=3,
                        help="heartbeat_misses on the cluster (detection = 100 ms x this)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    # A stopped benchmark still takes its cluster down (the finally in on_cluster).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict[str, Any] = {"in_process": [], "cluster": None}
    print(f"{'MiB':>5s} {'keys':>7s} {'frames':>6s} {'snapshot':>9s} {'encode':>8s} "
          f"{'decode':>8s} {'verify':>8s} {'install':>8s} {'digest':>8s} {'periodic':>8s} "
          f"{'1 part':>7s} {'1 recv':>7s}"
          f"   (ms, median of {args.repeats}; 1 part/recv: the longest)")
    for mib in args.sizes:
        row = in_process(mib, args.repeats, 16 * 1024 * 1024)
        report["in_process"].append(row)
        print(f"{mib:5d} {row['keys']:7d} {row['frames']:6d} {row['snapshot_ms']:9.0f} "
              f"{row['encode_ms']:8.0f} {row['decode_join_ms']:8.0f} {row['verify_ms']:8.0f} "
              f"{row['install_ms']:8.0f} {row['full_digest_ms']:8.0f} "
              f"{row['periodic_digest_ms']:8.1f} {row['longest_part_ms']:7.1f} "
              f"{row['longest_receive_ms']:7.1f}")
    if args.mib:
        report["cluster"] = cluster = on_cluster(args.mib, args.misses)
        print(f"cluster, {args.mib} MiB: filled in {cluster['fill_s']} s; kill -9 of a backup: "
              f"relaunch -> ready {cluster['relaunch_to_ready_ms']} ms; failovers meanwhile "
              f"{cluster['failovers']} (heartbeat_misses {args.misses})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
