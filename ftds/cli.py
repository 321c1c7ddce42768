"""``ftds``: the daemons, the client, the operator's tools and the embedded cluster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import importlib.metadata
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from .config import ClusterConfig, ConfigError, load_config
from .log import setup_logging
from .view import MAX_EPOCH

DEFAULT_CONFIG = os.environ.get("FTDS_CONFIG", "/etc/ftds/cluster.yml")

# Exit codes shared by every command; `ftds status` has its own (monitoring-plugin) meaning.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3
EXIT_SIGPIPE = 128 + signal.SIGPIPE  # stdout's reader went away, as the shell shows for cat


class CliError(Exception):
    """An operator error: what went wrong and what to do, on one line; ``code`` is the exit."""

    code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(CliError):
    """Bad arguments, found before anything was contacted."""

    code = EXIT_USAGE

    def __init__(self, message: str, hint: str = "", prog: str = "") -> None:
        super().__init__(message, hint)
        self.prog = prog


class OutcomeUnknown(CliError):
    """No answer in time: the request may or may not have taken effect."""

    code = EXIT_UNKNOWN


class Parser(argparse.ArgumentParser):
    """argparse, but its errors reach main()'s handler as one line instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see '{self.prog} --help'", prog=self.prog)


def _number(convert: Callable[[str], Any], low: float, *, above: bool = False,
            high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite number >= low (> low with ``above``), <= high if given."""
    def parse(text: str) -> Any:
        value = convert(text)  # a ValueError reads "invalid float value: 'x'"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
        if value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low:g} "
                                             f"(got {text})")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g} (got {text})")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


SECONDS = _number(float, 0, above=True)
RATE = _number(float, 0, above=True)  # per second
NON_NEGATIVE = _number(float, 0)
COUNT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
# Logical clients in one process: each is a record in the replicas' reply cache, and 100,000 of
# them already make each checkpoint about 0.4 s of a replica's loop.
MAX_SESSIONS = 100_000
SESSIONS = _number(int, 1, high=MAX_SESSIONS)
EPOCH = _number(int, 1, high=MAX_EPOCH)
VERSION = _number(int, 0, high=MAX_EPOCH)

# The daemons' --log-level: names as in journalctl -p, mapped to the logging module's levels.
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}


def _version() -> str:
    try:
        return importlib.metadata.version("ftds")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        from . import __version__

        return __version__


def _config(args: argparse.Namespace) -> ClusterConfig:
    return load_config(args.config)


def _replica_ids(config: ClusterConfig, ids: list[str] | tuple[str, ...]) -> list[str]:
    """``ids``, each checked against the cluster file (a typo must not reach the cluster)."""
    known = config.replica_ids
    for rid in ids:
        if rid not in known:
            raise UsageError(f"no replica {rid!r} in {config.path}",
                             f"name one of {', '.join(known)}")
    return list(ids)


def _id_list(config: ClusterConfig, text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise UsageError(f"an empty replica list ({text!r})", "give e.g. S1,S2")
    twice = sorted({rid for rid in ids if ids.count(rid) > 1})
    if twice:
        raise UsageError(f"{', '.join(twice)} named twice in {text!r}",
                         "name each replica of the ready set once")
    return _replica_ids(config, ids)


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
    _replica_ids(config, [args.id])
    setup_logging(config.trace.color, level=LOG_LEVELS[args.log_level])
    return run(ReplicaDaemon(args.config, args.id))


def cmd_lfd(args: argparse.Namespace) -> int:
    from .lfd import LocalFaultDetector
    from .runloop import run

    config = _config(args)
    _replica_ids(config, [args.id])
    setup_logging(config.trace.color, level=LOG_LEVELS[args.log_level])
    return run(LocalFaultDetector(args.config, args.id))


def cmd_gfd(args: argparse.Namespace) -> int:
    from .gfd import GlobalFaultDetector
    from .runloop import run

    setup_logging(_config(args).trace.color, level=LOG_LEVELS[args.log_level])
    return run(GlobalFaultDetector(args.config))


def cmd_rm(args: argparse.Namespace) -> int:
    from .rm.manager import ReplicationManager
    from .runloop import run

    setup_logging(_config(args).trace.color, level=LOG_LEVELS[args.log_level])
    return run(ReplicationManager(args.config))


# ============================================================================ status ====
def cmd_status(args: argparse.Namespace) -> int:
    from .rmclient import rm_request
    from .status import HEALTH_NAMES, health, status_text

    config = _config(args)
    if args.watch is not None:
        return _run(_watch_status(config, args))
    status = _run(rm_request(config, config.read_key(), "status_req", timeout=args.timeout))
    code, why = health(status)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"{status_text(status)}\n{HEALTH_NAMES[code]}: {why}")
    return code


async def _watch_status(config: ClusterConfig, args: argparse.Namespace) -> int:
    """``ftds status --watch``: the status and verdict again every interval until Ctrl-C, like
    ``watch patronictl list``; an RM that does not answer is one UNKNOWN frame, not the end.
    Returns the last verdict's exit code."""
    from .rmclient import RMRefused, RMUnreachable, rm_request
    from .status import HEALTH_NAMES, UNKNOWN, health, status_text

    key = config.read_key()
    clear = sys.stdout.isatty() and not args.json
    code = UNKNOWN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        started = time.monotonic()
        try:
            status: dict[str, Any] | None = await rm_request(
                config, key, "status_req", timeout=min(args.timeout, max(args.watch, 0.5)))
        except (RMUnreachable, RMRefused) as exc:
            status, code, why = None, UNKNOWN, str(exc)
        else:
            code, why = health(status)
        stamp = time.strftime("%H:%M:%S")
        if args.json:
            print(json.dumps({"at": time.time(), "verdict": HEALTH_NAMES[code],
                              "why": why, "status": status}), flush=True)
        else:
            body = status_text(status) if status is not None else ""
            frame = f"ftds status, every {args.watch:g}s · {stamp}\n{body}\n" \
                    f"{HEALTH_NAMES[code]}: {why}"
            print(("\033[H\033[2J" if clear else "\n") + frame.replace("\n\n", "\n"),
                  flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(),
                                   max(0.0, args.watch - (time.monotonic() - started)))
    return code


def cmd_incidents(args: argparse.Namespace) -> int:
    from .rmclient import rm_request
    from .status import incidents_text

    config = _config(args)
    reply = _run(rm_request(config, config.read_key(), "incidents_req", timeout=args.timeout))
    incidents = reply["incidents"][-args.last:] if args.last else reply["incidents"]
    print(json.dumps(incidents, indent=2) if args.json else incidents_text(incidents))
    return 0


# =========================================================================== client ====
class _NotJson(Exception):
    pass


def _not_json(name: str) -> Any:
    raise _NotJson(name)  # NaN and Infinity: Python's parser takes them, JSON has none


def _parse_value(text: str) -> Any:
    """JSON, else the string itself; JSON no replica could store is a usage error."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except (json.JSONDecodeError, _NotJson):
        return text
    except (RecursionError, ValueError) as exc:  # too deep, or an integer of 4,300+ digits
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise UsageError(f"the replicas would refuse this request: a value {why}",
                         "see 'ftds client --help'", prog="ftds client") from None


# What each op takes after KEY, for the usage error when the count is wrong.
OP_VALUES = {"get": (), "put": ("VALUE",), "incr": ("[DELTA]",), "delete": (),
             "cas": ("EXPECTED", "NEW")}


def _op_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The request, checked in full before anything is contacted."""
    from .statemachine import validate_op

    op: dict[str, Any] = {"op": args.op, "key": args.key}
    names = OP_VALUES[args.op]
    low = sum(not n.startswith("[") for n in names)
    if not low <= len(args.values) <= len(names):
        shape = " ".join(("ftds client", args.op, "KEY", *names))
        raise UsageError(f"{args.op} takes {' '.join(names) or 'no value'} after the key "
                         f"(got {len(args.values)})", f"usage: {shape}", prog="ftds client")
    if args.op == "put":
        op["value"] = _parse_value(args.values[0])
    elif args.op == "incr" and args.values:
        try:
            op["delta"] = int(args.values[0])
        except ValueError:
            raise UsageError(f"incr DELTA must be an integer (got {args.values[0]!r})",
                             "e.g. ftds client incr x 5", prog="ftds client") from None
    elif args.op == "cas":
        op["expect"] = _parse_value(args.values[0])
        op["value"] = _parse_value(args.values[1])
    problem = validate_op(op)
    if problem is not None:
        raise UsageError(f"the replicas would refuse this request: {problem}",
                         "see 'ftds client --help'", prog="ftds client")
    return op


async def _connected_client(config: ClusterConfig, name: str, trace: bool,
                            timeout: float) -> Any:
    """A started Client with at least one replica connected, else OutcomeUnknown."""
    from .client import Client

    client = Client(config, config.read_key(), name, trace=trace)
    await client.start()
    try:
        await client.wait_connected(timeout, count=1)
    except TimeoutError:
        await client.close()
        raise OutcomeUnknown(f"no replica of {config.path} answers (waited {timeout:g}s)",
                             "is the cluster up (ftds status)? does --config name it?") from None
    await asyncio.sleep(0.05)  # let the other replicas' welcomes arrive
    return client


def _client_ids(prog: str, given: str, *names: str) -> None:
    """--id must make client ids the replicas take (every name derived from it included)."""
    from .statemachine import client_id_problem

    for name in (given, *names):
        if (problem := client_id_problem(name)) is not None:
            made = "" if name == given else f" (it makes {name!r})"
            raise UsageError(f"--id {given!r}{made}: {problem}", "choose another --id",
                             prog=prog)


def cmd_client(args: argparse.Namespace) -> int:
    op = _op_from_args(args)  # a usage error must not wait for a connection
    _client_ids("ftds client", args.id)
    config = _config(args)
    setup_logging(config.trace.color)
    started = time.monotonic()
    connect_timeout = min(args.connect_timeout or args.timeout, args.timeout)

    async def main() -> dict[str, Any]:
        client = await _connected_client(config, args.id, not args.quiet, connect_timeout)
        call = asyncio.ensure_future(client.call(op))
        try:
            # One deadline for the whole command: connecting used part of it.
            done, _ = await asyncio.wait({call}, timeout=max(
                0.0, args.timeout - (time.monotonic() - started)))
        finally:
            call.cancel()  # no-op once done; else no "exception never retrieved" at exit
            await client.close()
        if call not in done:
            raise OutcomeUnknown(
                f"no reply within {args.timeout:g}s: the {args.op} may or may not have been "
                f"applied", f"read {args.key!r} to see, or retry with a longer --timeout")
        return call.result()

    reply = _run(main())
    print(json.dumps(reply["res"]))
    return EXIT_OK if reply["res"].get("ok") else EXIT_FAILED


def cmd_workload(args: argparse.Namespace) -> int:
    from .runloop import tune_gc
    from .workload import run_workload

    _client_ids("ftds workload", args.id, f"{args.id}.{args.clients}", f"{args.id}.hostile",
                f"{args.id}.twin")
    # The history is opened only once connected: whatever would stop it is refused now.
    if args.history and Path(args.history).is_dir():
        raise UsageError(f"--history {args.history}: is a directory",
                         "name a file in it, e.g. --history "
                         f"{Path(args.history) / (args.id + '.jsonl')}")
    if args.history and not Path(args.history).resolve().parent.is_dir():
        raise UsageError(f"--history {args.history}: its directory does not exist",
                         "create it first, or write the history elsewhere")
    if args.history and not os.access(Path(args.history).resolve().parent, os.W_OK):
        raise UsageError(f"--history {args.history}: its directory is not writable",
                         "write the history elsewhere, or run as a user who may")
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
        client = await _connected_client(config, args.id, not args.quiet, args.connect_timeout)
        client.duplicate_every = args.duplicate
        try:
            return await run_workload(
                config, client.key, name=args.id, clients=args.clients, rate=args.rate,
                duration=args.duration, keys=args.keys, trace=not args.quiet,
                history=args.history, mix=args.mix, seed=args.seed, client=client, stop=stop,
                prefix=args.prefix, hostile=args.hostile)
        finally:
            await client.close()

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

    if args.ctl == "force-primary" and not args.accept_data_loss:
        raise UsageError(f"force-primary makes {args.replica} the primary with only what it "
                         "holds: writes acknowledged beyond it are lost",
                         "if that is acceptable, add --accept-data-loss")
    config = _config(args)
    # Every replica named must be in the cluster file, checked before anything is sent.
    if args.ctl in ("reset-budget", "force-primary", "hold", "release") or (
            args.ctl == "promote" and args.replica is not None):
        _replica_ids(config, [args.replica])
    if args.ctl == "promote":
        _replica_ids(config, args.exclude)
    members = _id_list(config, args.members) if args.ctl in ("members", "view") else []
    if args.ctl == "view":
        _replica_ids(config, [args.primary])
        if args.primary not in members:
            raise UsageError(f"the primary {args.primary} is not in --members {args.members}",
                             "the ready set includes the primary")
    key = config.read_key()

    async def main() -> int:
        if args.ctl in ("bootstrap", "promote", "members", "view"):
            await ctl.refuse_past_a_running_rm(config, key)
        if args.ctl == "status":
            status = await ctl.statuses(config, key)
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                print(replica_table(status))
            if not any(status.values()):
                raise OutcomeUnknown(f"no replica of {config.path} answers",
                                     "are they running? does --config name this cluster?")
            return EXIT_OK
        if args.ctl == "bootstrap":
            view = await ctl.bootstrap(config, key, args.lease)
        elif args.ctl == "promote":
            view = await ctl.promote(config, key, args.replica, tuple(args.exclude), args.lease)
        elif args.ctl == "members":
            view = await ctl.set_members(config, key, members, args.lease)
        elif args.ctl == "view":
            view = View(args.epoch, args.version, args.primary, tuple(members), args.lease)
            if not any((await ctl.send_view(config, key, view)).values()):
                raise OutcomeUnknown(f"no replica took the view {view.describe()}",
                                     "see ftds ctl status")
        elif args.ctl == "reset-budget":
            from .rmclient import rm_request

            await rm_request(config, key, "reset_budget", {"replica": args.replica},
                             timeout=args.timeout)
            print(f"restart budget of {args.replica} reset")
            return EXIT_OK
        elif args.ctl in ("hold", "release"):
            from .rmclient import rm_request

            fields = {"replica": args.replica}
            if args.ctl == "hold":
                fields["reason"] = args.reason
            reply = await rm_request(config, key, args.ctl, fields, timeout=args.timeout)
            if args.ctl == "release":
                print(f"{args.replica} released: the RM relaunches it when it is down")
            elif reply.get("present"):
                print(f"{args.replica} held ({reply.get('reason')}): the RM will not relaunch "
                      f"it; stop it on its host (systemctl stop ftds-replica@{args.replica}) "
                      f"and 'ftds ctl release {args.replica}' when done")
            else:
                print(f"{args.replica} held ({reply.get('reason')}): it is down and the RM "
                      f"leaves it so until 'ftds ctl release {args.replica}'")
            return EXIT_OK
        elif args.ctl == "force-primary":
            reply = await ctl.force_primary(config, key, args.replica, timeout=args.timeout)
            if reply.get("t") != "ok":
                raise OutcomeUnknown(f"the RM answered {reply.get('t')!r}, not ok",
                                     "see ftds status: is the RM the version of this ftds?")
            print(reply.get("message") or f"{args.replica} forced to be the primary of epoch "
                  f"{reply.get('epoch')}")
            return EXIT_OK
        elif args.ctl == "checkpoint":
            if not await ctl.checkpoint_now(config, key):
                raise CliError("no primary answered", "see ftds ctl status")
            print("checkpoint requested")
            return EXIT_OK
        else:  # pragma: no cover - argparse restricts the choices
            return EXIT_USAGE
        print(view.describe())
        return EXIT_OK

    return _run(main())


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
            raise CliError(f"nothing running in {run_dir}",
                           f"ftds local up --dir {args.dir} starts a cluster there")
        os.kill(pid, signal.SIGHUP)
        print("every daemon re-reads the cluster file (like systemctl reload)")
        return 0
    if args.local == "down":
        stopped = local.stop_cluster(run_dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {run_dir}")
        return 0
    if args.local == "demo":
        return dev_tool("demo", "the demo").demo(run_dir, args.mode, args.faults)
    if args.local == "supervise":
        setup_logging("never")
        return local.Supervisor(run_dir, with_managers=not args.no_managers).run()
    return 2


def local_up(args: argparse.Namespace, run_dir: Path) -> int:
    from . import ctl, local

    if local.read_pid(run_dir, "supervisor") is not None:
        raise CliError(f"a local cluster is already running in {run_dir}",
                       f"ftds local down --dir {run_dir} stops it")
    tunables = {}
    if args.heartbeat_interval:
        tunables["heartbeat_interval"] = args.heartbeat_interval
    path = local.write_cluster(run_dir, args.replicas, args.mode, args.base_port,
                               tunables=tunables, trace={"requests": not args.quiet},
                               tls=args.tls)
    if local.forget_previous_cluster(run_dir):
        print(f"a new cluster in {run_dir}: the previous one's data (in memory) is gone")
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


TOOLS = "ftds_tools"  # the development tools' package (ftds-tools, tools/ in the repository)


def dev_tool(module: str, what: str) -> ModuleType:
    """``ftds_tools.<module>``, imported only when its command runs: the tools are not in the
    wheel that hosts install (they change often, and a new package restarts the replicas).
    Where they are not installed, a CliError says how to install them."""
    name = f"{TOOLS}.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only the tools themselves missing (or an older ftds-tools without this module);
        # anything else missing on the way in is a bug, to be seen whole.
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise
        raise CliError(f"{what} is a development tool, not installed here (ftds-tools)",
                       "pip install -e tools in the ftds repository installs it") from None


def cmd_bench(args: argparse.Namespace) -> int:
    module = {"core": "core_bench", "recovery": "recovery_bench", "lab": "lab_bench",
              "bigstate": "bigstate_bench", "flood": "flood_bench"}[args.which]
    return dev_tool(f"bench.{module}", "the benchmark").main(args.rest)


def cmd_chaos(args: argparse.Namespace) -> int:
    runner = dev_tool("chaos.runner", "the chaos suite")
    if args.chaos == "check":
        result = runner.recheck(Path(args.dir))  # nothing to judge: main()'s handler, exit 2
        print(json.dumps(result, indent=2))
        return 0 if result["valid"] else 1
    settings = runner.RunSettings(
        target=args.target, mode=args.mode, schedule=args.schedule, faults=args.faults,
        seed=args.seed, clients=args.clients, sessions=args.sessions, rate=args.rate,
        keys=args.keys, out=Path(args.out), heal_timeout=args.heal_timeout,
        duplicate=args.duplicate, hostile=args.hostile)
    planted = os.environ.get("FTDS_FAULT")
    if planted:
        settings.env["FTDS_FAULT"] = planted
    try:
        report = runner.run_chaos(settings)
    except ValueError as exc:  # an unknown schedule or fault kind, refused before anything ran
        raise UsageError(str(exc)) from None
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


def cmd_pki(args: argparse.Namespace) -> int:
    from . import pki  # cryptography: loaded only for this command

    try:
        passphrase_file = getattr(args, "key_passphrase_file", None)  # `show` signs nothing
        passphrase = pki.read_passphrase(Path(passphrase_file)) if passphrase_file else None
        if args.pki == "ca":
            crt = pki.create_ca(Path(args.dir), args.cluster, args.days, force=args.force,
                                passphrase=passphrase)
            state = "encrypted with the passphrase" if passphrase else "in clear"
            print(f"wrote a new CA for cluster {args.cluster}: {crt}, {crt.parent / pki.CA_KEY} "
                  f"(mode 0600, {state}), {crt.parent / pki.CA_CRL}")
        elif args.pki == "issue":
            crt, key = pki.issue(Path(args.ca), Path(args.out), role=args.role, name=args.name,
                                 hosts=args.host, days=args.days, keep_key=args.keep_key,
                                 passphrase=passphrase)
            print(f"wrote {crt} and {key} (mode 0600): {args.role} {args.name} on "
                  f"{', '.join(args.host)}")
        elif args.pki == "revoke":
            pki.revoke(Path(args.ca), Path(args.cert), passphrase=passphrase)
            print(f"revoked {args.cert} in {Path(args.ca) / pki.CA_CRL}: copy it to every host "
                  "(the cluster file's tls.crl)")
        elif args.pki == "show":
            for field, value in pki.summary(pki.load_cert(Path(args.cert))).items():
                print(f"{field + ':':<11}{value}")
        else:  # cluster
            crts = pki.issue_cluster(Path(args.ca), Path(args.out), _config(args),
                                     passphrase=passphrase)
            print(f"wrote {len(crts)} certificates and keys to {args.out}: "
                  f"{', '.join(c.stem for c in crts)}")
    except pki.PkiError as exc:
        raise UsageError(str(exc), prog=f"ftds pki {args.pki}") from None
    except ConfigError as exc:  # here, for the line to begin with the subcommand
        raise UsageError(str(exc), "fix it, or name the cluster file with --config FILE or "
                         "$FTDS_CONFIG", prog=f"ftds pki {args.pki}") from None
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:  # a development tool: hosts installed without the dev extra lack it
        raise CliError("shell completion needs shtab, which is not installed",
                       "pip install shtab (it comes with ftds[dev]), or generate the script "
                       "where ftds[dev] is installed") from None
    parser = build_parser()
    # Arguments naming a file or a directory complete as paths.
    kinds = {"FILE": shtab.FILE, "DIR": shtab.DIRECTORY}
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.metavar in kinds:
                action.complete = kinds[action.metavar]  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    config.read_key()
    where = ""
    if config.tls is not None:  # every identity this host holds must load, with the CA's
        ca = Path(config.tls.ca).resolve()
        names = sorted(p.stem for p in Path(config.tls.dir).glob("*.crt") if p.resolve() != ca)
        if not names:
            raise ConfigError(f"{config.path}: tls.dir: no certificate in {config.tls.dir} "
                              f"(each daemon and tool needs its <name>.crt and <name>.key)")
        for name in names:
            config.link_tls(name)
        where = f"; TLS identities here: {', '.join(names)}"
    print(f"{args.config}: ok ({config.mode}, {len(config.replicas)} replicas{where})")
    return 0


# =========================================================================== parser ====
STATUS_EPILOG = """\
exit codes (the monitoring-plugin convention: Nagios, Icinga, Sensu):
  0  OK        the primary (sequencer) and every backup present and ready
  1  DEGRADED  a backup down or not ready, or a replica's restart budget exhausted
  2  CRITICAL  no primary, or the primary not present or not ready
  3  UNKNOWN   no verdict: the RM did not answer, or a bad argument or cluster file
"""

CLIENT_EPILOG = """\
VALUE, EXPECTED and NEW are read as JSON (42, "text", [1, 2], null); anything else is a string.

exit codes:
  0  the request succeeded (its reply is printed as JSON)
  1  the request is known to have failed: an error reply (e.g. incr of a string)
  2  usage error: nothing was sent
  3  outcome unknown: no replica reachable, or no reply within --timeout; the request
     may or may not have been applied
"""

CTL_EPILOG = """\
exit codes: 0 done, 1 refused or failed, 2 usage error (nothing was sent),
3 no answer (the outcome is unknown: check with ftds status or ftds ctl status)
"""

FORCE_PRIMARY_DESCRIPTION = """\
The last resort when the RM will not elect a primary without losing writes (it stays
unavailable rather than lossy): the RM makes REPLICA the primary (sequencer) of a new
epoch with only what REPLICA holds. Writes acknowledged beyond it are lost, so this
refuses to run without --accept-data-loss. The RM's reply says what was decided.
"""

COMPLETION_EPILOG = """\
install:
  bash  ftds completion bash > /etc/bash_completion.d/ftds   (or: source <(ftds completion bash))
  zsh   ftds completion zsh > "${fpath[1]}/_ftds"
  tcsh  ftds completion tcsh > ~/.ftds.completion.csh; source it from ~/.tcshrc
"""

MAIN_EPILOG = """\
exit codes: 0 success, 1 failure, 2 usage or cluster-file error, 3 no answer from the
cluster (outcome unknown); ftds status follows the monitoring-plugin convention instead
(see ftds status --help).
"""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="ftds", description=__doc__, epilog=MAIN_EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"ftds {_version()}",
                        help="print the version of ftds and exit")
    config_help = (f"cluster file (default {DEFAULT_CONFIG}, or $FTDS_CONFIG); before or after "
                   "the command")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # No default here: a subcommand's default would overwrite a -c given before it.
        p.add_argument("--config", "-c", default=argparse.SUPPRESS, metavar="FILE",
                       help=config_help)
        return p

    def daemon(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # str.lower: systemd units and habits write INFO as often as info.
        p.add_argument("--log-level", type=str.lower, choices=list(LOG_LEVELS),
                       default="info", help="the least severe lines logged: debug, info "
                       "(default: the course's lines), warning or error")
        return with_config(p)

    with_config(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = daemon(sub.add_parser("replica", help="run a replica (S1, S2, ...)"))
    p.add_argument("--id", required=True, help="which replica of the cluster file (S1, ...)")
    p.set_defaults(func=cmd_replica)

    p = daemon(sub.add_parser("lfd", help="run the Local Fault Detector of a replica"))
    p.add_argument("--id", required=True, help="the replica it watches (S1, ...)")
    p.set_defaults(func=cmd_lfd)
    p = daemon(sub.add_parser("gfd", help="run the Global Fault Detector"))
    p.set_defaults(func=cmd_gfd)
    p = daemon(sub.add_parser("rm", help="run the Replication Manager"))
    p.set_defaults(func=cmd_rm)

    p = with_config(sub.add_parser("status", help="the cluster as the RM sees it, and a "
                                   "verdict (exit 0 OK, 1 degraded, 2 critical, 3 unknown)",
                                   epilog=STATUS_EPILOG, formatter_class=raw))
    p.add_argument("--json", action="store_true", help="the RM's raw status as JSON")
    p.add_argument("--timeout", type=SECONDS, default=3.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 3)")
    p.add_argument("--watch", type=SECONDS, nargs="?", const=1.0, default=None,
                   metavar="SECONDS",
                   help="refresh every SECONDS (default 1) until Ctrl-C; with --json, one "
                        "JSON line per refresh; exits with the last verdict's code")
    p.set_defaults(func=cmd_status)
    p = with_config(sub.add_parser("incidents", help="faults and their recovery timings"))
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--last", type=NON_NEGATIVE_INT, default=0, metavar="N",
                   help="only the last N (default 0: all)")
    p.add_argument("--timeout", type=SECONDS, default=3.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 3)")
    p.set_defaults(func=cmd_incidents)

    p = with_config(sub.add_parser("client", help="send one request",
                                   epilog=CLIENT_EPILOG, formatter_class=raw))
    p.add_argument("--id", default="C1", help="client id (default C1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no course log lines")
    p.add_argument("--timeout", type=SECONDS, default=5.0, metavar="SECONDS",
                   help="give up (exit 3) without a reply after this long, connecting "
                   "included (default 5)")
    p.add_argument("--connect-timeout", type=SECONDS, metavar="SECONDS",
                   help="give up sooner when no replica accepts a connection in this long "
                   "(default: --timeout)")
    p.add_argument("op", choices=list(OP_VALUES), help="the operation")
    p.add_argument("key", help="the key")
    # default=[]: argparse would otherwise list VALUE as missing along with op and key
    p.add_argument("values", nargs="*", default=[], metavar="VALUE",
                   help="put: VALUE; incr: [DELTA] (default 1); cas: EXPECTED NEW")
    p.set_defaults(func=cmd_client)

    p = with_config(sub.add_parser("workload", help="clients sending requests at a rate"))
    p.add_argument("--id", default="C1", help="name prefix of the clients (C1 -> C1, C1.2..)")
    p.add_argument("--clients", type=SESSIONS, default=3,
                   help=f"logical clients, each one request at a time (default 3, at most "
                        f"{MAX_SESSIONS:,})")
    p.add_argument("--rate", type=NON_NEGATIVE, default=20.0, help="requests/s over all "
                   "clients; 0 = as fast as replies come (default 20)")
    p.add_argument("--duration", type=SECONDS, default=10.0, metavar="SECONDS",
                   help="how long to send (default 10)")
    p.add_argument("--keys", type=COUNT, default=4, help="how many keys (default 4)")
    p.add_argument("--mix", default="incr", choices=["incr", "rw"],
                   help="incr, or rw (put/get/cas/incr) (default incr)")
    p.add_argument("--history", metavar="FILE", help="write every operation as JSON lines here")
    p.add_argument("--seed", type=int, default=1, help="seed of the operation mix (default 1)")
    p.add_argument("--prefix", default="", help="key name prefix (fresh keys for a history "
                   "checked against an empty initial state)")
    p.add_argument("--duplicate", type=NON_NEGATIVE_INT, default=0, metavar="N",
                   help="send every Nth request twice, as a retry (fault injection)")
    p.add_argument("--connect-timeout", type=SECONDS, default=10.0, metavar="SECONDS",
                   help="give up (exit 3) when no replica accepts a connection in this long "
                   "(default 10)")
    p.add_argument("--hostile", action="store_true",
                   help="add a session <id>.hostile whose requests must all be refused")
    p.add_argument("--quiet", "-q", action="store_true", help="no course log lines")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(func=cmd_workload)

    p = with_config(sub.add_parser("ctl", help="operator commands on the replicas and the RM",
                                   epilog=CTL_EPILOG, formatter_class=raw))
    ctl_sub = p.add_subparsers(dest="ctl", required=True, metavar="COMMAND")

    def ctl_parser(name: str, text: str, description: str = "") -> argparse.ArgumentParser:
        return with_config(ctl_sub.add_parser(name, help=text, description=description or text,
                                              epilog=CTL_EPILOG, formatter_class=raw))

    q = ctl_parser("status", "every replica's status (exit 3 when none answers)")
    q.add_argument("--json", action="store_true", help="as JSON")
    for name, text in (("bootstrap", "epoch 1 over the fresh replicas"),
                       ("promote", "epoch + 1 with a new primary / sequencer"),
                       ("members", "same epoch, new ready set"),
                       ("view", "send an explicit view"),
                       ("checkpoint", "ask the primary for a checkpoint now")):
        q = ctl_parser(name, text)
        q.add_argument("--lease", type=NON_NEGATIVE, default=0.0, metavar="SECONDS",
                       help="lease (s) granted with the view")
        if name == "promote":
            q.add_argument("replica", nargs="?", help="who (default: highest applied seq)")
            q.add_argument("--exclude", action="append", default=[], metavar="REPLICA",
                           help="never this one (repeatable)")
        if name == "members":
            q.add_argument("members", help="comma-separated ready set, e.g. S1,S2,S4")
        if name == "view":
            q.add_argument("--epoch", type=EPOCH, required=True, help="the view's epoch (>= 1)")
            q.add_argument("--version", type=VERSION, default=0,
                           help="the view's version within the epoch (default 0)")
            q.add_argument("--primary", required=True, metavar="REPLICA",
                           help="the primary (sequencer)")
            q.add_argument("--members", required=True,
                           help="comma-separated ready set, the primary included")
    q = ctl_parser("reset-budget", "let the RM relaunch a replica again after it hit its "
                   "restart budget")
    q.add_argument("replica", help="whose budget (S1, ...)")
    q.add_argument("--timeout", type=SECONDS, default=3.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 3)")
    q = ctl_parser("hold", "keep a replica down for maintenance: the RM stops relaunching it "
                   "(status shows HELD) until it is released")
    q.add_argument("replica", help="which replica (S1, ...)")
    q.add_argument("--reason", required=True,
                   help="why, shown by ftds status (one line, e.g. \"disk swap\")")
    q.add_argument("--timeout", type=SECONDS, default=3.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 3)")
    q = ctl_parser("release", "end a hold: the RM relaunches the replica again when it is down")
    q.add_argument("replica", help="which replica (S1, ...)")
    q.add_argument("--timeout", type=SECONDS, default=3.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 3)")
    q = ctl_parser("force-primary", "make a replica the primary even if writes are lost "
                   "(the last resort)", FORCE_PRIMARY_DESCRIPTION)
    q.add_argument("replica", metavar="REPLICA", help="the replica to make primary (S1, ...)")
    q.add_argument("--accept-data-loss", action="store_true",
                   help="required: say that losing acknowledged writes is acceptable")
    q.add_argument("--timeout", type=SECONDS, default=10.0, metavar="SECONDS",
                   help="how long to wait for the RM (default 10)")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("local", help="a whole cluster as local processes")
    local_sub = p.add_subparsers(dest="local", required=True, metavar="COMMAND")
    for name, text in (("up", "start replicas, LFDs, GFD and RM as local processes"),
                       ("down", "stop the local cluster"),
                       ("reload", "every daemon re-reads the cluster file (like systemctl "
                                  "reload)"),
                       ("supervise", "the supervisor that up starts (not for direct use)"),
                       ("demo", "the course's Milestone 5: faults while clients run (a development "
                                "tool: ftds-tools)")):
        q = local_sub.add_parser(name, help=text, description=text)
        q.add_argument("--dir", default=os.environ.get("FTDS_LOCAL_DIR", "run/local"),
                       help="the cluster's directory: file, key, logs, pids (default "
                       "run/local, or $FTDS_LOCAL_DIR)")
        q.add_argument("--no-managers", action="store_true",
                       help="replicas only (no LFD/GFD/RM; views by ftds ctl)")
        if name == "up":
            q.add_argument("--replicas", type=_number(int, 1, high=99), default=3,
                           help="how many replicas (default 3)")
            q.add_argument("--mode", choices=["passive", "active"], default="passive",
                           help="replication mode (default passive)")
            q.add_argument("--base-port", type=_number(int, 1024, high=65535 - 300),
                           metavar="PORT", help="ports from here on (default: the first free "
                           "range from 7000)")
            q.add_argument("--heartbeat-interval", type=SECONDS, metavar="SECONDS",
                           help="LFD heartbeat interval (default 0.1)")
            q.add_argument("--quiet", action="store_true", help="no per-request log lines")
            q.add_argument("--tls", action="store_true",
                           help="mutual TLS on every link: a CA and every daemon's "
                           "certificate in the cluster's directory (default: the cluster key)")
        if name == "demo":
            q.add_argument("--mode", choices=["passive", "active"], default="passive",
                           help="replication mode (default passive)")
            q.add_argument("--faults", type=COUNT, default=3,
                           help="how many faults to inject (default 3)")
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("bench", help="benchmarks: core (throughput/latency) or recovery "
                       "(detection/failover/relaunch), each against PySyncObj (a development tool: "
                       "ftds-tools)")
    p.add_argument("which", choices=["core", "recovery", "lab", "bigstate", "flood"],
                   help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...",
                   help="the benchmark's own options (ftds bench WHICH --help)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("chaos", help="fault injection with a recorded history and a checker (a "
                       "development tool: ftds-tools)")
    chaos_sub = p.add_subparsers(dest="chaos", required=True, metavar="COMMAND")
    q = chaos_sub.add_parser("run", help="clients + nemesis, then the verdict")
    q.add_argument("--target", choices=["local", "lab"], default="local",
                   help="local: an embedded cluster here; lab: the deployed lab (default local)")
    q.add_argument("--mode", choices=["passive", "active"], default="passive",
                   help="local target: the cluster's mode (the lab runs what was deployed)")
    q.add_argument("--schedule", default="random", metavar="SCHEDULE",
                   help="which faults, in which order: random (default), all, milestone5, "
                        "kills, pauses, or fault kinds by name, comma-separated (e.g. "
                        "fault_during_recovery,primary_crash_backups_out)")
    q.add_argument("--faults", type=COUNT, default=10, help="how many faults (default 10)")
    q.add_argument("--seed", type=int, default=1,
                   help="seed of the schedule and the clients: a run can be repeated")
    q.add_argument("--clients", type=COUNT, default=3, help="client processes")
    q.add_argument("--sessions", type=SESSIONS, default=4, help="logical clients per process")
    q.add_argument("--rate", type=SECONDS, default=100.0,
                   help="requests/s per client process")
    q.add_argument("--keys", type=COUNT, default=6, help="how many keys (default 6)")
    q.add_argument("--out", default="run/chaos", metavar="DIR",
                   help="where the report, timeline and histories go (default run/chaos)")
    q.add_argument("--heal-timeout", type=SECONDS, default=60.0, metavar="SECONDS",
                   help="how long the cluster may take to heal after a fault")
    q.add_argument("--duplicate", type=NON_NEGATIVE_INT, default=25, metavar="N",
                   help="clients send every Nth request twice (0: never)")
    q.add_argument("--no-hostile", dest="hostile", action="store_false",
                   help="no hostile client (on by default)")
    q = chaos_sub.add_parser("check", help="judge a saved run's histories again")
    q.add_argument("dir", metavar="DIR", help="a run's output directory (ftds chaos run --out), "
                   "or its histories/ directory")
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser("keygen", help="write a new cluster key file")
    p.add_argument("file", help="where (never overwritten: it must not exist yet)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("pki", help="the cluster's CA and certificates for mutual TLS (one per "
                       "daemon: role in the OU, name in the CN)")
    pki_sub = p.add_subparsers(dest="pki", required=True, metavar="COMMAND")
    passphrase_default = os.environ.get("FTDS_CA_PASSPHRASE_FILE") or None

    def passphrase_option(parser: argparse.ArgumentParser, text: str) -> None:
        parser.add_argument("--key-passphrase-file", default=passphrase_default, metavar="FILE",
                            help=f"{text} (FILE's first line, without its newline; default "
                            "$FTDS_CA_PASSPHRASE_FILE)")

    q = pki_sub.add_parser("ca", help="make a new CA: DIR/ca.crt, ca.key (0600), ca.crl",
                           description="Make a new CA: DIR/ca.crt, DIR/ca.key (mode 0600, PKCS8 "
                           "PEM; in clear, or encrypted with --key-passphrase-file, which "
                           "issue, revoke and cluster then need too) and an empty DIR/ca.crl.")
    q.add_argument("--dir", required=True, metavar="DIR", help="the CA's directory")
    q.add_argument("--cluster", required=True, metavar="NAME",
                   help="the cluster's name (the cluster file's name), the certificates' O")
    q.add_argument("--days", type=COUNT, default=3650, metavar="N",
                   help="how long the CA is valid (default 3650)")
    q.add_argument("--force", action="store_true",
                   help="replace an existing CA in DIR (what it issued is no longer trusted "
                   "unless its ca.crt stays in the verifiers' bundle)")
    passphrase_option(q, "encrypt ca.key with the passphrase in FILE, not empty; keep FILE "
                      "out of the CA directory")
    q = pki_sub.add_parser("issue", help="issue one daemon's certificate: OUT/NAME.crt and "
                           "NAME.key (0600), replacing earlier ones")
    q.add_argument("--ca", required=True, metavar="DIR", help="the CA's directory")
    q.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    # ftds.pki.ROLES, written out: importing it would load cryptography for every command.
    q.add_argument("--role", required=True,
                   choices=["replica", "lfd", "gfd", "rm", "admin", "client"],
                   help="what the holder is (the certificate's OU)")
    q.add_argument("--name", required=True, metavar="NAME",
                   help="who: S1, LFD1, GFD, RM, admin, client (the CN, and the file's name)")
    q.add_argument("--host", required=True, action="append", metavar="HOST",
                   help="an address or name it serves on (repeat for more)")
    q.add_argument("--days", type=COUNT, default=825, metavar="N",
                   help="how long it is valid (default 825; never beyond the CA)")
    q.add_argument("--keep-key", action="store_true",
                   help="certify the existing NAME.key in --out again (a renewal or a CA "
                   "rotation that running daemons take without a restart)")
    passphrase_option(q, "the CA key's passphrase, if it is encrypted, in FILE")
    q = pki_sub.add_parser("revoke", help="add a certificate to the CA's ca.crl")
    q.add_argument("--ca", required=True, metavar="DIR", help="the CA's directory")
    q.add_argument("cert", metavar="FILE", help="the certificate to revoke (a .crt it issued)")
    passphrase_option(q, "the CA key's passphrase, if it is encrypted, in FILE")
    q = pki_sub.add_parser("show", help="a certificate's role, name, cluster, hosts, expiry, "
                           "issuer and serial")
    q.add_argument("cert", metavar="FILE", help="the certificate (.crt)")
    q = with_config(pki_sub.add_parser("cluster", help="issue every daemon's and tool's "
                                       "certificate for a cluster file"))
    q.add_argument("--ca", required=True, metavar="DIR", help="the CA's directory")
    q.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    passphrase_option(q, "the CA key's passphrase, if it is encrypted, in FILE")
    p.set_defaults(func=cmd_pki)

    p = with_config(sub.add_parser("check-config", help="validate a cluster file"))
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("completion", help="print a shell completion script (needs shtab)",
                       description="Print a completion script for ftds, generated from this "
                       "very parser by shtab.", epilog=COMPLETION_EPILOG, formatter_class=raw)
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="for which shell")
    p.set_defaults(func=cmd_completion)
    return parser


def _prog(args: argparse.Namespace) -> str:
    """``ftds ctl reset-budget``: the command as typed, to begin each error line."""
    parts = ["ftds", args.command]
    if args.command in ("ctl", "local", "chaos"):  # their subcommand's dest is the command
        parts.append(getattr(args, args.command))
    return " ".join(parts)


# What to do about the OS errors a daemon meets binding its ports (the cluster file's doing).
BIND_TODO = {
    errno.EADDRINUSE: "another process holds that port (ss -ltnp shows which): stop it, or "
                      "give this daemon another port in the cluster file",
    errno.EADDRNOTAVAIL: "this host has no such address: is this the host the cluster file "
                         "puts this daemon on?",
}


def _explain(exc: Exception) -> tuple[int, str, str] | None:
    """(exit code, what went wrong, what to do) for an expected error; None for a bug."""
    from .ctl import CtlError
    from .rmclient import RMRefused, RMUnreachable

    if isinstance(exc, CliError):
        return exc.code, str(exc), exc.hint
    # Only a loaded runner can have raised it; importing it (and its deps) here would slow
    # every other error, ftds status's UNKNOWN included.
    runner = sys.modules.get(f"{TOOLS}.chaos.runner")
    if runner is not None and isinstance(exc, runner.NothingToCheck):  # judged nothing
        return (EXIT_USAGE, str(exc), "name the directory of a ftds chaos run (its --out), "
                "which holds histories/*.jsonl")
    if isinstance(exc, ConfigError):
        return (EXIT_USAGE, str(exc),
                "fix it, or name the cluster file with --config FILE or $FTDS_CONFIG")
    if isinstance(exc, CtlError):
        return EXIT_FAILED, str(exc), exc.todo
    if isinstance(exc, RMRefused):
        todo = ("this RM does not know the command: upgrade ftds on the manager"
                if exc.code == "unknown_type" else "see ftds status")
        return EXIT_FAILED, f"the RM refused: {exc.message}", todo
    if isinstance(exc, RMUnreachable):
        return (EXIT_UNKNOWN, str(exc), "is the RM running (systemctl status ftds-rm on the "
                "manager)? does --config name this cluster?")
    if isinstance(exc, ConnectionError | TimeoutError):
        return (EXIT_UNKNOWN, str(exc) or "no answer in time",
                "is the cluster up (ftds status)? does --config name it?")
    if isinstance(exc, OSError) and exc.errno in BIND_TODO and "bind" in str(exc):
        # asyncio's strerror names the address: "error while attempting to bind on ..."
        return EXIT_FAILED, exc.strerror or str(exc), BIND_TODO[exc.errno]
    if isinstance(exc, OSError):
        what = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        todo = {FileExistsError: "choose another path, or remove it first",
                FileNotFoundError: "check the path",
                PermissionError: "check its permissions, or run as a user who may"}
        return EXIT_FAILED, what, todo.get(type(exc), "")
    return None


def _stdout_gone() -> bool:
    """Whether stdout's reader went away (then stdout is silenced for the rest of the exit);
    else a broken pipe was a socket's, a connection error like any other."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced or closed (tests, embedding)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # The write end of a pipe without a reader polls as an error (Linux, BSD).
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    # Else the interpreter's own flush at exit prints "Exception ignored ...".
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


def main(argv: list[str] | None = None) -> int:
    prog = "ftds"
    try:
        args, extra = build_parser().parse_known_args(argv)
        prog = _prog(args)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}",
                             f"see '{prog} --help'")
        if not hasattr(args, "config"):
            args.config = DEFAULT_CONFIG
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe must reach the handler below
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            return EXIT_SIGPIPE  # `ftds ... | head`: the reader has what it wanted
        explained = _explain(exc)
        if explained is None:
            raise  # a bug, not an operator error: its traceback is what we need
        code, what, todo = explained
        if isinstance(exc, UsageError) and exc.prog:
            prog = exc.prog
        line = f"{prog}: {what}" + (f"; {todo}" if todo else "")
        print(" ".join(line.split()), file=sys.stderr)
        # ftds status is a monitoring check: whatever keeps it from a verdict is UNKNOWN.
        return EXIT_UNKNOWN if prog.split()[1:2] == ["status"] else code


if __name__ == "__main__":
    sys.exit(main())
