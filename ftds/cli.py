"""``ftds``: the daemons, the client, the operator's tools and the embedded cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .config import ClusterConfig, ConfigError, load_config
from .log import setup_logging

DEFAULT_CONFIG = os.environ.get("FTDS_CONFIG", "/etc/ftds/cluster.yml")


def _config(args: argparse.Namespace) -> ClusterConfig:
    return load_config(args.config)


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


# ========================================================================== daemons ====
def cmd_replica(args: argparse.Namespace) -> int:
    from .replica.server import ReplicaDaemon
    from .runloop import run

    config = _config(args)
    setup_logging(config.trace.color)
    return run(ReplicaDaemon(args.config, args.id))


def cmd_lfd(args: argparse.Namespace) -> int:
    from .lfd import LocalFaultDetector
    from .runloop import run

    setup_logging(_config(args).trace.color)
    return run(LocalFaultDetector(args.config, args.id))


def cmd_gfd(args: argparse.Namespace) -> int:
    from .gfd import GlobalFaultDetector
    from .runloop import run

    setup_logging(_config(args).trace.color)
    return run(GlobalFaultDetector(args.config))


def cmd_rm(args: argparse.Namespace) -> int:
    from .rm.manager import ReplicationManager
    from .runloop import run

    setup_logging(_config(args).trace.color)
    return run(ReplicationManager(args.config))


# ============================================================================ status ====
def cmd_status(args: argparse.Namespace) -> int:
    from .rmclient import rm_request
    from .status import status_text

    config = _config(args)
    try:
        status = _run(rm_request(config, config.read_key(), "status_req", timeout=args.timeout))
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"ftds status: the RM at {config.rm.host}:{config.rm.port} does not answer "
              f"({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else status_text(status))
    healthy = status["primary"] and status["replicas"][status["primary"]]["ready"]
    return 0 if healthy else 3


def cmd_incidents(args: argparse.Namespace) -> int:
    from .rmclient import rm_request
    from .status import incidents_text

    config = _config(args)
    try:
        reply = _run(rm_request(config, config.read_key(), "incidents_req",
                                timeout=args.timeout))
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"ftds incidents: the RM does not answer ({exc})", file=sys.stderr)
        return 1
    incidents = reply["incidents"][-args.last:] if args.last else reply["incidents"]
    print(json.dumps(incidents, indent=2) if args.json else incidents_text(incidents))
    return 0


# =========================================================================== client ====
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _op_from_args(args: argparse.Namespace) -> dict[str, Any]:
    op: dict[str, Any] = {"op": args.op, "key": args.key}
    if args.op == "put":
        if len(args.values) != 1:
            raise SystemExit("ftds client put KEY VALUE")
        op["value"] = _parse_value(args.values[0])
    elif args.op == "incr":
        op["delta"] = int(args.values[0]) if args.values else 1
    elif args.op == "cas":
        if len(args.values) != 2:
            raise SystemExit("ftds client cas KEY EXPECTED NEW")
        op["expect"] = _parse_value(args.values[0])
        op["value"] = _parse_value(args.values[1])
    return op


def cmd_client(args: argparse.Namespace) -> int:
    from .client import Client

    config = _config(args)
    setup_logging(config.trace.color)
    trace = not args.quiet

    async def main() -> int:
        client = Client(config, config.read_key(), args.id, trace=trace)
        await client.start()
        try:
            await client.wait_connected(args.connect_timeout, count=1)
            await asyncio.sleep(0.05)  # let the other replicas' welcomes arrive
            reply = await asyncio.wait_for(client.call(_op_from_args(args)), args.timeout)
        finally:
            await client.close()
        print(json.dumps(reply["res"]))
        return 0 if reply["res"].get("ok") else 1

    return _run(main())


def cmd_workload(args: argparse.Namespace) -> int:
    from .runloop import tune_gc
    from .workload import run_workload

    tune_gc()
    config = _config(args)
    setup_logging(config.trace.color, logging.WARNING if args.quiet else logging.INFO)
    async def main() -> dict[str, Any]:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Stop issuing; every session still finishes the request it has out.
            loop.add_signal_handler(sig, stop.set)
        return await run_workload(
            config, config.read_key(), name=args.id, clients=args.clients, rate=args.rate,
            duration=args.duration, keys=args.keys, trace=not args.quiet, history=args.history,
            mix=args.mix, seed=args.seed, stop=stop, prefix=args.prefix,
            duplicate=args.duplicate)

    summary = _run(main())
    print(json.dumps(summary, indent=2) if args.json else summary_text(summary))
    return 0 if summary["failed"] == 0 else 1


def summary_text(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    return (f"{summary['acked']} acked / {summary['sent']} sent in {summary['duration']:.1f}s "
            f"({summary['rate']:.0f}/s); latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} "
            f"ms, max {lat['max']:.1f} ms; retries {summary['retries']}, "
            f"duplicate replies discarded {summary['duplicates']}, longest gap "
            f"{summary['max_gap_ms']:.0f} ms")


# ============================================================================== ctl ====
def cmd_ctl(args: argparse.Namespace) -> int:
    from . import ctl
    from .view import View

    config = _config(args)
    key = config.read_key()

    async def main() -> int:
        if args.ctl == "status":
            status = await ctl.statuses(config, key)
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                print(replica_table(status))
            return 0
        if args.ctl == "bootstrap":
            view = await ctl.bootstrap(config, key, args.lease)
        elif args.ctl == "promote":
            view = await ctl.promote(config, key, args.replica, tuple(args.exclude), args.lease)
        elif args.ctl == "members":
            view = await ctl.set_members(config, key, args.members.split(","), args.lease)
        elif args.ctl == "view":
            view = View(args.epoch, args.version, args.primary,
                        tuple(args.members.split(",")), args.lease)
            await ctl.send_view(config, key, view)
        elif args.ctl == "reset-budget":
            from .rmclient import rm_request

            await rm_request(config, key, "reset_budget", {"replica": args.replica})
            print(f"restart budget of {args.replica} reset")
            return 0
        elif args.ctl == "checkpoint":
            ok = await ctl.checkpoint_now(config, key)
            print("checkpoint requested" if ok else "no primary answered")
            return 0 if ok else 1
        else:  # pragma: no cover - argparse restricts the choices
            return 2
        print(view.describe())
        return 0

    try:
        return _run(main())
    except RuntimeError as exc:
        print(f"ftds ctl: {exc}", file=sys.stderr)
        return 1


def replica_table(status: dict[str, dict[str, Any] | None]) -> str:
    rows = [("replica", "role", "ready", "epoch", "seq", "commit", "ckpt", "digest", "pid")]
    for rid, s in status.items():
        if s is None:
            rows.append((rid, "unreachable", "-", "-", "-", "-", "-", "-", "-"))
            continue
        rows.append((rid, s["role"], str(s["i_am_ready"]), str(s["epoch"]), str(s["seq"]),
                     str(s["commit"]), str(s["checkpoint_count"]), s.get("digest", "")[:12],
                     str(s["pid"])))
    return format_table(rows)


def format_table(rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines)


# ============================================================================ local ====
def cmd_local(args: argparse.Namespace) -> int:
    from . import local

    run_dir = Path(args.dir).resolve()  # children run elsewhere: give them absolute paths
    if args.local == "up":
        return local_up(args, run_dir)
    if args.local == "reload":
        pid = local.read_pid(run_dir, "supervisor")
        if pid is None:
            print(f"nothing running in {run_dir}", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGHUP)
        print("every daemon re-reads the cluster file (like systemctl reload)")
        return 0
    if args.local == "down":
        stopped = local.stop_cluster(run_dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {run_dir}")
        return 0
    if args.local == "demo":
        from .demo import demo

        return demo(run_dir, args.mode, args.faults)
    if args.local == "supervise":
        setup_logging("never")
        return local.Supervisor(run_dir, with_managers=not args.no_managers).run()
    return 2


def local_up(args: argparse.Namespace, run_dir: Path) -> int:
    from . import ctl, local

    if local.read_pid(run_dir, "supervisor") is not None:
        print(f"a local cluster is already running in {run_dir} (ftds local down to stop it)")
        return 1
    tunables = {}
    if args.heartbeat_interval:
        tunables["heartbeat_interval"] = args.heartbeat_interval
    path = local.write_cluster(run_dir, args.replicas, args.mode, args.base_port,
                               tunables=tunables, trace={"requests": not args.quiet})
    sup_args = ["local", "supervise", "--dir", str(run_dir)]
    if args.no_managers:
        sup_args.append("--no-managers")
    local.spawn(run_dir, "supervisor", sup_args)
    config = load_config(path)
    key = config.read_key()

    async def wait_ready() -> dict[str, Any]:
        async def all_answer() -> dict[str, Any] | None:
            status = await ctl.statuses(config, key, timeout=0.5)
            return status if all(status.values()) else None

        await ctl.wait_for(all_answer, 20)
        if args.no_managers:
            await ctl.bootstrap(config, key, lease=3600.0)

        async def all_ready() -> dict[str, Any] | None:
            status = await ctl.statuses(config, key, timeout=0.5)
            ready = [s for s in status.values() if s and s["i_am_ready"]]
            return status if len(ready) == len(status) else None

        return await ctl.wait_for(all_ready, 20)

    started = time.monotonic()
    try:
        status = _run(wait_ready())
    except TimeoutError:
        print(f"the local cluster did not become ready; see {run_dir}/logs/", file=sys.stderr)
        return 1
    print(f"local {args.mode} cluster up in {time.monotonic() - started:.1f}s "
          f"(config {path})")
    if args.no_managers:
        print(replica_table(status))
    else:
        from .rmclient import rm_request
        from .status import status_text

        print(status_text(_run(rm_request(config, key, "status_req"))))
    print(f"\n  ftds status --config {path}\n  ftds client --config {path} put x 1")
    if config.rm_metrics_port and not args.no_managers:
        print(f"  curl http://{config.rm.host}:{config.rm_metrics_port}/metrics")
    print(f"  ftds local down --dir {run_dir}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import core_bench, lab_bench, recovery_bench

    module = {"core": core_bench, "recovery": recovery_bench, "lab": lab_bench}[args.which]
    return module.main(args.rest)


def cmd_chaos(args: argparse.Namespace) -> int:
    from .chaos import runner

    if args.chaos == "check":
        result = runner.recheck(Path(args.dir))
        print(json.dumps(result, indent=2))
        return 0 if result["linearizable"] else 1
    settings = runner.RunSettings(
        target=args.target, mode=args.mode, schedule=args.schedule, faults=args.faults,
        seed=args.seed, clients=args.clients, sessions=args.sessions, rate=args.rate,
        keys=args.keys, out=Path(args.out), heal_timeout=args.heal_timeout,
        duplicate=args.duplicate)
    planted = os.environ.get("FTDS_FAULT")
    if planted:
        settings.env["FTDS_FAULT"] = planted
    report = runner.run_chaos(settings)
    print(runner.render_text(report))
    print(f"report: {args.out}/report.txt, report.json, timeline.png; histories in "
          f"{args.out}/histories/")
    return 0 if report["verdict"]["valid"] else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    import secrets

    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    print(f"wrote a new cluster key to {args.file} (mode 0600)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    config.read_key()
    print(f"{args.config}: ok ({config.mode}, {len(config.replicas)} replicas)")
    return 0


# =========================================================================== parser ====
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                       help=f"cluster file (default {DEFAULT_CONFIG}, or $FTDS_CONFIG)")
        return p

    p = with_config(sub.add_parser("replica", help="run a replica (S1, S2, ...)"))
    p.add_argument("--id", required=True)
    p.set_defaults(func=cmd_replica)

    for name, func, text in (("lfd", cmd_lfd, "run the Local Fault Detector of a replica"),):
        p = with_config(sub.add_parser(name, help=text))
        p.add_argument("--id", required=True, help="the replica it watches (S1, ...)")
        p.set_defaults(func=func)
    p = with_config(sub.add_parser("gfd", help="run the Global Fault Detector"))
    p.set_defaults(func=cmd_gfd)
    p = with_config(sub.add_parser("rm", help="run the Replication Manager"))
    p.set_defaults(func=cmd_rm)

    p = with_config(sub.add_parser("status", help="the cluster as the RM sees it"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_status)
    p = with_config(sub.add_parser("incidents", help="faults and their recovery timings"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--last", type=int, default=0, help="only the last N")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_incidents)

    p = with_config(sub.add_parser("client", help="send one request"))
    p.add_argument("--id", default="C1", help="client id (default C1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no course log lines")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("op", choices=["get", "put", "incr", "delete", "cas"])
    p.add_argument("key")
    p.add_argument("values", nargs="*")
    p.set_defaults(func=cmd_client)

    p = with_config(sub.add_parser("workload", help="clients sending requests at a rate"))
    p.add_argument("--id", default="C1", help="name prefix of the clients (C1 -> C1, C1.2..)")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rate", type=float, default=20.0, help="requests/s over all clients; "
                   "0 = as fast as replies come")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--mix", default="incr", help="incr | rw (put/get/cas/incr)")
    p.add_argument("--history", help="write every operation as JSON lines here")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default="", help="key name prefix (fresh keys for a history "
                   "checked against an empty initial state)")
    p.add_argument("--duplicate", type=int, default=0, metavar="N",
                   help="send every Nth request twice, as a retry (fault injection)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workload)

    p = with_config(sub.add_parser("ctl", help="operator commands on the replicas"))
    ctl_sub = p.add_subparsers(dest="ctl", required=True)
    q = ctl_sub.add_parser("status", help="every replica's status")
    q.add_argument("--json", action="store_true")
    for name, text in (("bootstrap", "epoch 1 over the fresh replicas"),
                       ("promote", "epoch + 1 with a new primary / sequencer"),
                       ("members", "same epoch, new ready set"),
                       ("view", "send an explicit view"),
                       ("checkpoint", "ask the primary for a checkpoint now")):
        q = ctl_sub.add_parser(name, help=text)
        q.add_argument("--lease", type=float, default=0.0,
                       help="lease (s) granted with the view")
        if name == "promote":
            q.add_argument("replica", nargs="?", help="who (default: highest applied seq)")
            q.add_argument("--exclude", action="append", default=[])
        if name == "members":
            q.add_argument("members", help="comma-separated ready set, e.g. S1,S2,S4")
        if name == "view":
            q.add_argument("--epoch", type=int, required=True)
            q.add_argument("--version", type=int, default=0)
            q.add_argument("--primary", required=True)
            q.add_argument("--members", required=True)
    q = ctl_sub.add_parser("reset-budget", help="let the RM relaunch a replica again after it "
                           "hit its restart budget")
    q.add_argument("replica")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("local", help="a whole cluster as local processes")
    local_sub = p.add_subparsers(dest="local", required=True)
    for name in ("up", "down", "reload", "supervise", "demo"):
        q = local_sub.add_parser(name)
        q.add_argument("--dir", default=os.environ.get("FTDS_LOCAL_DIR", "run/local"))
        q.add_argument("--no-managers", action="store_true",
                       help="replicas only (no LFD/GFD/RM; views by ftds ctl)")
        if name == "up":
            q.add_argument("--replicas", type=int, default=3)
            q.add_argument("--mode", choices=["passive", "active"], default="passive")
            q.add_argument("--base-port", type=int)
            q.add_argument("--heartbeat-interval", type=float)
            q.add_argument("--quiet", action="store_true", help="no per-request log lines")
        if name == "demo":
            q.add_argument("--mode", choices=["passive", "active"], default="passive")
            q.add_argument("--faults", type=int, default=3)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("bench", help="benchmarks: core (throughput/latency) or recovery "
                       "(detection/failover/relaunch), each against PySyncObj")
    p.add_argument("which", choices=["core", "recovery", "lab"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("chaos", help="fault injection with a recorded history and a checker")
    chaos_sub = p.add_subparsers(dest="chaos", required=True)
    q = chaos_sub.add_parser("run", help="clients + nemesis, then the verdict")
    q.add_argument("--target", choices=["local", "lab"], default="local")
    q.add_argument("--mode", choices=["passive", "active"], default="passive",
                   help="local target: the cluster's mode (the lab runs what was deployed)")
    q.add_argument("--schedule", choices=["random", "milestone5", "kills", "pauses", "all"],
                   default="random")
    q.add_argument("--faults", type=int, default=10)
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--clients", type=int, default=3, help="client processes")
    q.add_argument("--sessions", type=int, default=4, help="logical clients per process")
    q.add_argument("--rate", type=float, default=100.0, help="requests/s per client process")
    q.add_argument("--keys", type=int, default=6)
    q.add_argument("--out", default="run/chaos")
    q.add_argument("--heal-timeout", type=float, default=60.0,
                   help="how long the cluster may take to heal after a fault")
    q.add_argument("--duplicate", type=int, default=25, metavar="N",
                   help="clients send every Nth request twice (0: never)")
    q = chaos_sub.add_parser("check", help="judge a saved run's histories again")
    q.add_argument("dir")
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser("keygen", help="write a new cluster key file")
    p.add_argument("file")
    p.set_defaults(func=cmd_keygen)

    p = with_config(sub.add_parser("check-config", help="validate a cluster file"))
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"ftds: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
