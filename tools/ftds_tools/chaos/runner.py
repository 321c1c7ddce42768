"""A chaos run: clients record a history while the nemesis injects faults; then the verdict.

``ftds chaos run --target local|lab --schedule random --faults K --seed S`` runs the clients,
injects the schedule's faults one after another (each held, recovered, then the cluster given
time to heal; a compound fault overlaps several inside one step), stops the clients, collects
histories, replica logs and statuses, and judges them (``checks`` and ``linearizability``).
A hostile client process runs beside the others (``RunSettings.hostile``; on the lab, the
deployed ``ftds workload --hostile`` on the client host):
its refused requests are in the history and judged by the ``hostile input`` check. An operator
override a fault needed (``primary_crash_backups_out``) is saved as ``overrides.json`` and
excuses exactly the writes it may lose. Everything lands in the output directory: the
histories, the replicas' logs, their final statuses and the final counter values (all
re-checkable with ``ftds chaos check DIR``), ``report.json``, ``report.txt`` and
``timeline.png``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftds import ctl, local
from ftds.config import ClusterConfig, load_config
from ftds.rmclient import reset_budgets, rm_request

from .checks import (
    Problem,
    check_acknowledged,
    check_counters,
    check_digests,
    check_divergence_log,
    check_epochs,
    check_executions,
    check_hostile,
    check_logs_complete,
    excuse_forced_loss,
    parse_replica_logs,
)
from .history import Op, load
from .linearizability import check
from .linkproxy import LinkProxyThread
from .nemesis import FaultEvent, LabTarget, LocalTarget, Schedule, Target, run_compound


@dataclass
class RunSettings:
    target: str = "local"
    mode: str = "passive"
    schedule: str = "random"
    faults: int = 10
    seed: int = 1
    clients: int = 3  # client processes
    sessions: int = 4  # logical clients per process
    rate: float = 100.0  # requests/s per process
    keys: int = 6
    heal_timeout: float = 60.0
    settle: float = 1.0  # seconds of normal operation between faults
    prefix: str = ""  # key prefix: the checker assumes the keys start empty
    duplicate: int = 25  # clients send every Nth request twice, as a retry
    out: Path = field(default_factory=lambda: Path("run/chaos"))
    run_dir: Path | None = None  # local target: where the cluster runs
    env: dict[str, str] = field(default_factory=dict)  # e.g. FTDS_FAULT for planted bugs
    tunables: dict[str, float] = field(default_factory=dict)  # local target's cluster file
    hostile: bool = True  # a hostile client process among the others
    hostile_rate: float = 10.0  # its normal session's requests/s (one hostile request each)


# ========================================================================= environments ====
class LocalEnv:
    """The embedded cluster started for this run (executions traced)."""

    def __init__(self, s: RunSettings) -> None:
        self.s = s
        self.dir = s.run_dir or (s.out / "cluster")
        if self.dir.exists():
            local.stop_cluster(self.dir)
            shutil.rmtree(self.dir)
        self.path = local.write_cluster(self.dir, 3, s.mode, tunables=s.tunables,
                                        trace={"requests": False, "executions": True})
        self.config = load_config(self.path)
        self.key = self.config.read_key()
        # The daemons dial each other through these (partitions); the clients dial directly.
        self.links = LinkProxyThread(self.config)
        self.routes = self.links.write_routes(self.dir / "links.json")
        self.target: Target = LocalTarget(self.dir, self.links)
        self.workloads: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        local.spawn(self.dir, "supervisor", ["local", "supervise", "--dir", str(self.dir)],
                    env={**self.s.env, **self.links.env(self.routes)})

    def start_workloads(self, histories: Path) -> None:
        for k in range(1, self.s.clients + 1):
            self.workloads.append(subprocess.Popen(
                [sys.executable, "-m", "ftds", "workload", "--config", str(self.path),
                 "--id", f"C{k}", "--clients", str(self.s.sessions), "--rate", str(self.s.rate),
                 "--duration", "86400", "--keys", str(self.s.keys), "--mix", "rw",
                 "--seed", str(self.s.seed), "--prefix", self.s.prefix,
                 "--duplicate", str(self.s.duplicate),
                 "--history", str(histories / f"C{k}.jsonl"),
                 "--json", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        if self.s.hostile:
            self.workloads.append(subprocess.Popen(
                [sys.executable, "-m", "ftds_tools.chaos.hostile", "--config", str(self.path),
                 "--id", "H", "--rate", str(self.s.hostile_rate), "--keys", str(self.s.keys),
                 "--seed", str(self.s.seed), "--prefix", self.s.prefix,
                 "--history", str(histories / "H.jsonl")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    def stop_workloads(self) -> list[dict[str, Any]]:
        for proc in self.workloads:
            proc.send_signal(signal.SIGINT)
        results = []
        for proc in self.workloads:
            try:
                out, _ = proc.communicate(timeout=90)
                results.append(json.loads(out) if out else {})
            except subprocess.TimeoutExpired:
                proc.kill()
                results.append({})
        return results

    def fetch_histories(self, histories: Path) -> None:
        pass  # written in place

    def abort(self) -> None:
        for proc in self.workloads:
            if proc.poll() is None:
                proc.kill()
        self.stop()

    def replica_logs(self) -> dict[str, str]:
        return {rid: (self.dir / "logs" / f"{rid}.log").read_text(errors="replace")
                for rid in self.config.replica_ids}

    def stop(self) -> None:
        local.stop_cluster(self.dir)
        self.links.stop()


class LabEnv:
    """A deployed lab (``scripts/lab up`` + the playbook with tracing of executions on)."""

    def __init__(self, s: RunSettings) -> None:
        from ..labenv import Lab

        self.s = s
        self.lab = Lab()
        self.target = LabTarget(self.lab)
        self.client_host = self.lab.clients[0]
        self.path = self.lab.fetch_cluster(s.out / "cluster")
        self.config: ClusterConfig = load_config(self.path)
        self.key = self.config.read_key()
        if not self.config.trace.executions:
            raise RuntimeError("the lab cluster does not trace executions: deploy with "
                               "-e '{\"ftds_common_trace\": {\"executions\": true}}'")
        self.started = self.lab.ssh(self.lab.manager, "date '+%Y-%m-%d %H:%M:%S'",
                                    shared=True).stdout.strip()
        # The lab keeps its state between runs: this run's keys are its own.
        s.prefix = s.prefix or f"r{int(time.time())}-"
        self.workloads: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        pass  # deployed beforehand

    def start_workloads(self, histories: Path) -> None:
        self.lab.ssh(self.client_host, "rm -rf /tmp/ftds-chaos && mkdir -p /tmp/ftds-chaos",
                     shared=True)
        for k in range(1, self.s.clients + 1):
            command = (f"exec /opt/ftds/bin/ftds workload --config /etc/ftds/cluster.yml "
                       f"--id C{k} --clients {self.s.sessions} --rate {self.s.rate} "
                       f"--duration 86400 --keys {self.s.keys} --mix rw --seed {self.s.seed} "
                       f"--prefix {self.s.prefix} --duplicate {self.s.duplicate} "
                       f"--history /tmp/ftds-chaos/C{k}.jsonl --json -q")
            self._workload_over_ssh(command)
        if self.s.hostile:
            # The deployed tool's own hostile session, beside one normal session.
            self._workload_over_ssh(
                f"exec /opt/ftds/bin/ftds workload --config /etc/ftds/cluster.yml --id H "
                f"--clients 1 --rate {self.s.hostile_rate} --duration 86400 "
                f"--keys {self.s.keys} --mix rw --seed {self.s.seed} --prefix {self.s.prefix} "
                f"--hostile --history /tmp/ftds-chaos/H.jsonl --json -q")

    def _workload_over_ssh(self, command: str) -> None:
        self.workloads.append(subprocess.Popen(
            ["ssh", "-F", str(self.lab.ssh_config), "-o", "ControlMaster=no",
             "-o", "ControlPath=none", self.client_host, command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def stop_workloads(self) -> list[dict[str, Any]]:
        self.lab.ssh(self.client_host, "pkill -INT -f 'ftds workload' || true", check=False)
        results = []
        for proc in self.workloads:
            try:
                out, _ = proc.communicate(timeout=120)
                results.append(json.loads(out) if out.strip() else {})
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                results.append({})
        return results

    def fetch_histories(self, histories: Path) -> None:
        names = [f"C{k}" for k in range(1, self.s.clients + 1)] + (["H"] if self.s.hostile else [])
        for name in names:
            data = self.lab.ssh(self.client_host, f"cat /tmp/ftds-chaos/{name}.jsonl",
                                timeout=300).stdout
            (histories / f"{name}.jsonl").write_text(data)

    def replica_logs(self) -> dict[str, str]:
        logs = {}
        for rid, host in self.lab.replica_hosts.items():
            unit = f"ftds-replica@{rid}.service"
            text = self.lab.ssh(host, f"journalctl -u {unit} --since '{self.started}' -o cat "
                                      "--no-pager", timeout=300).stdout
            # The replica ran before the run began (it was deployed): a journal without its
            # earlier lines has rotated away lines of the run too.
            # (Not `-n 1`: with --until, after a reboot of the host, it finds nothing.)
            before = self.lab.ssh(host, f"journalctl -u {unit} --until '{self.started}' -q "
                                        "-o cat --no-pager | head -n 1", check=False,
                                  timeout=60).stdout
            if not before.strip():
                text = (f"LOG INCOMPLETE {rid}: the journal of {host} no longer holds {unit}'s "
                        "lines from before the run began (raise SystemMaxUse)\n") + text
            logs[rid] = text
        return logs

    def stop(self) -> None:
        pass  # the lab stays up

    def abort(self) -> None:
        self.lab.ssh(self.client_host, "pkill -KILL -f 'ftds workload' || true", check=False)
        for proc in self.workloads:
            if proc.poll() is None:
                proc.kill()


# ============================================================================== run ====
async def _status(config: ClusterConfig, key: bytes) -> dict[str, Any] | None:
    try:
        return await rm_request(config, key, "status_req", timeout=2.0)
    except (OSError, TimeoutError, ConnectionError):
        return None


async def wait_healthy(config: ClusterConfig, key: bytes, timeout: float) -> dict[str, Any]:
    async def healthy() -> dict[str, Any] | None:
        s = await _status(config, key)
        if s and s["primary"] and not s.get("failover_pending") and s["gfd_stable"] and \
                all(r["ready"] for r in s["replicas"].values()):
            return s
        return None
    return await ctl.wait_for(healthy, timeout, 0.05)


def run_chaos(s: RunSettings, log: Any = print) -> dict[str, Any]:
    Schedule.check_name(s.schedule, s.target)  # ValueError before anything starts
    s.out.mkdir(parents=True, exist_ok=True)
    histories = s.out / "histories"
    if histories.exists():
        shutil.rmtree(histories)
    histories.mkdir()
    env: LocalEnv | LabEnv = LocalEnv(s) if s.target == "local" else LabEnv(s)
    try:
        return _run(s, env, histories, log)
    except BaseException:
        env.abort()  # nothing of a failed run keeps running
        raise


def _run(s: RunSettings, env: LocalEnv | LabEnv, histories: Path, log: Any) -> dict[str, Any]:
    s.mode = env.config.mode  # the lab runs what was deployed
    env.start()
    events: list[FaultEvent] = []
    started = time.time()
    try:
        asyncio.run(wait_healthy(env.config, env.key, s.heal_timeout))
        env.start_workloads(histories)
        time.sleep(s.settle + 1)
        schedule = Schedule.named(s.schedule, env.target, s.faults, s.seed)
        for n, name in enumerate(schedule.steps, 1):
            kind = env.target.kinds[name]
            try:
                status = asyncio.run(wait_healthy(env.config, env.key, s.heal_timeout))
            except TimeoutError:
                log(f"  the cluster is not healthy after {s.heal_timeout:g}s: stopping the "
                    f"schedule after {n - 1} faults")
                break
            asyncio.run(reset_budgets(env.config, env.key))
            victim, role = schedule.pick_victim(kind, status)
            event = FaultEvent(name, victim, role, time.time(), epoch_before=status["epoch"])
            hold = schedule.hold(kind)
            if kind.compound:
                asyncio.run(run_compound(env.target, kind, status, env.config, env.key,
                                         schedule.rng, hold, event))
            else:
                event.note = env.target.inject(kind, victim, status["primary"])
                if hold:
                    time.sleep(hold)
            env.target.recover(kind, victim)
            event.recovered = time.time()
            asyncio.run(_noticed(env.config, env.key, victim, event.injected))
            try:
                healed = asyncio.run(wait_healthy(env.config, env.key, s.heal_timeout))
                event.healthy = time.time()
                event.epoch_after = healed["epoch"]
            except TimeoutError:
                event.note += f"; NOT healthy after {s.heal_timeout:g}s"
                env.target.heal_all()
            events.append(event)
            took = (event.healthy or time.time()) - event.injected
            log(f"  fault {n:3d}/{len(schedule.steps)} {name:18s} {victim:6s} ({role}): "
                f"{event.note}; healthy after {took:5.2f}s, epoch {event.epoch_before}->"
                f"{event.epoch_after}")
            time.sleep(s.settle)
    finally:
        env.target.heal_all()
    try:
        asyncio.run(wait_healthy(env.config, env.key, s.heal_timeout))
    except TimeoutError:
        log(f"  the cluster is not healthy at the end (after {s.heal_timeout:g}s); judging "
            "what was recorded")
    client_results = env.stop_workloads()
    env.fetch_histories(histories)
    status = asyncio.run(_converged(env.config, env.key))
    logs = env.replica_logs()
    ops = load(sorted(histories.glob("*.jsonl")))
    counters = sorted({o.key for o in ops if o.f == "incr" and not o.hostile})
    final: dict[str, Any] | None
    try:
        final = asyncio.run(_read(env.config, env.key, counters))
    except TimeoutError:
        final = None
        log("  the final values could not be read: counters are not judged")
    try:
        incidents = asyncio.run(rm_request(env.config, env.key, "incidents_req"))["incidents"]
    except (OSError, TimeoutError, ConnectionError):
        incidents = []
    env.stop()
    overrides = [e.extra["override"] for e in events if "override" in e.extra]
    save_inputs(s.out, logs, status, final, overrides)
    verdict = judge(ops, logs, status, final, overrides=overrides)
    report = build_report(s, events, ops, verdict, incidents, client_results, started)
    write_report(s.out, report, ops, events, incidents)
    return report


async def _noticed(config: ClusterConfig, key: bytes, victim: str, since: float,
                   timeout: float = 3.0) -> bool:
    """Wait until the cluster shows the fault (unhealthy, or an incident for the victim)."""
    async def seen() -> bool:
        status = await _status(config, key)
        if status is None or not status["gfd_stable"] or status.get("failover_pending") or \
                not all(r["ready"] for r in status["replicas"].values()):
            return True
        try:
            incidents = (await rm_request(config, key, "incidents_req"))["incidents"]
        except (OSError, TimeoutError, ConnectionError):
            return True
        return any(i["replica"] == victim and i["detected"] >= since - 0.05 for i in incidents)
    try:
        return await ctl.wait_for(seen, timeout, 0.02)
    except TimeoutError:
        return False


async def _converged(config: ClusterConfig, key: bytes) -> dict[str, dict[str, Any] | None]:
    async def same_seq() -> dict[str, dict[str, Any] | None] | None:
        status = await ctl.statuses(config, key, timeout=1.0)
        ready = [v for v in status.values() if v and v["i_am_ready"]]
        if ready and len({v["seq"] for v in ready}) == 1 and len(ready) == len(status):
            return status
        return None
    try:
        return await ctl.wait_for(same_seq, 30, 0.1)
    except TimeoutError:
        return await ctl.statuses(config, key, timeout=1.0)


async def _read(config: ClusterConfig, key: bytes, keys: list[str]) -> dict[str, Any]:
    from ftds.client import Client

    client = Client(config, key, f"chaos-reader-{os.getpid()}", trace=False)
    await client.start()
    try:
        await client.wait_connected(10, count=1)
        await asyncio.sleep(0.1)
        return {k: (await asyncio.wait_for(client.call({"op": "get", "key": k}), 30))
                ["res"]["value"] for k in keys}
    finally:
        await client.close()


# Each check by name, in report order, with what it judges.
CHECKS = {
    "linearizability": "per key, the client histories",
    "hostile input": "every hostile request refused with an error, none acknowledged",
    "counters": "acknowledged <= final <= attempted increments",
    "executions": "what every replica executed, at every seq (EXEC/RESET lines)",
    "acknowledgements": "every acknowledged write is in the history where it was acknowledged",
    "epochs": "one takeover per epoch; nothing acknowledged after deposition",
    "digests": "the ready replicas' final digests",
    "divergence log": "DIVERGENCE lines in the replicas' logs",
}


def judge(ops: list[Op], logs: dict[str, str] | None, status: dict[str, Any] | None,
          final: dict[str, Any] | None, *, final_expected: bool = True,
          overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The verdict of every check; a check whose input is missing (``None``: a re-check of a
    run saved without it) is SKIPPED, not passed. ``final`` None with ``final_expected`` means
    the values could not be read: counters then fail as unavailable.

    ``overrides``: the operator overrides the nemesis used (``force_primary`` with accepted data
    loss). The operations the lone old primary acknowledged that the forced epoch did not keep
    are judged as unknown outcomes (``checks.excuse_forced_loss``), and listed as excused."""
    traces, takeovers = parse_replica_logs(logs or {})
    ops, excused = excuse_forced_loss(ops, takeovers, overrides or [])
    verdicts = check(ops)
    lin_problems = [Problem("linearizability", v.explanation, v.involved)
                    for v in verdicts if not v.ok]
    groups: dict[str, list[Problem] | None] = {"linearizability": lin_problems}
    groups["hostile input"] = check_hostile(ops, excused)
    if final is not None:
        groups["counters"] = check_counters(ops, final)
    elif final_expected:
        groups["counters"] = [Problem("unavailable",
                                      "the final counter values could not be read")]
    else:
        groups["counters"] = None
    traced = logs is not None
    groups["executions"] = check_logs_complete(traces) + check_executions(traces, takeovers) \
        if traced else None
    groups["acknowledgements"] = check_acknowledged(ops, traces, takeovers) if traced else None
    groups["epochs"] = check_epochs(takeovers, ops, status) if traced else None
    groups["digests"] = check_digests(status) if status is not None else None
    groups["divergence log"] = check_divergence_log(traces) if traced else None
    problems = {k: v for k, v in groups.items() if v is not None}
    flat = [p for group in problems.values() for p in group]
    checks = []
    for name, what in CHECKS.items():
        found = groups[name]
        kinds: dict[str, int] = {}
        for p in found or []:
            kinds[p.check] = kinds.get(p.check, 0) + 1
        checks.append({"name": name, "judges": what, "problems": len(found or []),
                       "kinds": kinds,
                       "verdict": "SKIPPED" if found is None else "FAIL" if found else "PASS"})
    return {
        "valid": not flat,
        "checks": checks,
        "keys_checked": len(verdicts),
        "problems": {k: [p.to_json() for p in v] for k, v in problems.items()},
        "first_violation": flat[0].to_json() if flat else None,
        "acked_lost": sum(1 for p in flat if p.check == "acknowledged lost"),
        "duplicates": sum(1 for p in flat if p.check == "executed twice"),
        "divergence": sum(1 for p in flat if p.check == "divergence"),
        "moved_backward": sum(1 for p in flat if p.check == "state moved backward"),
        "split_brain": sum(1 for p in flat if p.check in ("split brain",
                                                          "acknowledged after deposed")),
        "linearizable": not lin_problems,
        "takeovers": [t.__dict__ for t in takeovers],
        "executions_traced": {r: len(t.execs) for r, t in traces.items()},
        "refused_duplicates": sum(1 for t in traces.values() for e in t.execs
                                  if not e.executed),
        "resets": {r: t.resets for r, t in traces.items()},
        "overrides": overrides or [],
        "excused": [o.describe() for o in excused],
        "hostile": hostile_summary(ops),
    }


def hostile_summary(ops: list[Op]) -> dict[str, dict[str, int]]:
    """Per kind of hostile request: how many were refused, accepted, left unanswered."""
    found: dict[str, dict[str, int]] = {}
    for op in ops:
        if op.hostile:
            row = found.setdefault(op.hostile, {"fail": 0, "ok": 0, "info": 0})
            row[op.outcome] += 1
    return found


def build_report(s: RunSettings, events: list[FaultEvent], ops: list[Op],
                 verdict: dict[str, Any], incidents: list[dict[str, Any]],
                 client_results: list[dict[str, Any]], started: float) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for e in events:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
    outcomes = {o: sum(1 for op in ops if op.outcome == o) for o in ("ok", "fail", "info")}
    recent = [i for i in incidents if i["detected"] >= started - 1]
    # The load the run sustained: acknowledged operations over the clients' whole run.
    ends = [op.complete for op in ops if not math.isinf(op.complete)]
    span = max(ends) - min(op.invoke for op in ops) if ends else 0.0
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.__dict__.items()
                     if k != "env"} | {"planted": s.env.get("FTDS_FAULT", "")},
        "duration_s": round(time.time() - started, 1),
        "faults": len(events), "faults_by_kind": by_kind,
        "faults_not_healed": sum(1 for e in events if e.healthy is None),
        "operations": len(ops), "outcomes": outcomes,
        "clients_s": round(span, 1),
        "acked_per_s": round(outcomes["ok"] / span, 1) if span > 0 else 0.0,
        "verdict": verdict,
        "events": [e.to_json() for e in events],
        "incidents": recent,
        "clients": client_results,
    }


def render_text(report: dict[str, Any]) -> str:
    v = report["verdict"]
    st = report["settings"]
    lines = [
        f"chaos run: target {st['target']}, {st['mode']} mode, schedule {st['schedule']}, "
        f"seed {st['seed']}{', PLANTED ' + st['planted'] if st.get('planted') else ''}",
        f"  {report['faults']} faults in {report['duration_s']}s: " + ", ".join(
            f"{k} {n}" for k, n in sorted(report["faults_by_kind"].items())),
        f"  operations: {report['operations']} ("
        + ", ".join(f"{k} {n}" for k, n in report["outcomes"].items()) + "); "
        f"{report.get('acked_per_s', 0):,.0f} acknowledged/s over the clients' "
        f"{report.get('clients_s', 0)}s",
        f"  acked lost: {v['acked_lost']}   duplicates: {v['duplicates']}   divergence: "
        f"{v['divergence']}   moved backward: {v.get('moved_backward', 0)}   split brain: "
        f"{v['split_brain']}   linearizable: "
        f"{'yes' if v['linearizable'] else 'NO'} ({v['keys_checked']} keys)",
        f"  faults that did not heal: {report['faults_not_healed']}",
        *render_checks(v),
    ]
    if v.get("hostile"):
        lines.append("  hostile requests (refused/accepted/unanswered): " + ", ".join(
            f"{k} {n['fail']}/{n['ok']}/{n['info']}" for k, n in sorted(v["hostile"].items())))
    for o in v.get("overrides", []):
        lines.append(f"  operator override after {o['old_primary']} (epoch {o['old_epoch']}) "
                     f"died alone: force_primary {o['forced']} -> epoch {o['forced_epoch']}; "
                     f"{len(v.get('excused', []))} operations it acknowledged alone excused "
                     "as possibly lost")
    timings = [i for i in report["incidents"] if i.get("closed")]
    if timings:
        def med(name: str) -> str:
            values = sorted(i[name] for i in timings if i.get(name) is not None)
            return f"{values[len(values) // 2]:.0f} ms" if values else "-"
        lines.append(f"  recovery (median over {len(timings)} incidents): detect->removed "
                     f"{med('detect_to_removed_ms')}, ->new primary "
                     f"{med('detect_to_new_primary_ms')}, relaunch->ready "
                     f"{med('relaunch_to_ready_ms')}")
    lines.append(f"VERDICT: {'VALID' if v['valid'] else 'INVALID'}")
    if not v["valid"]:
        first = v["first_violation"]
        lines.append(f"first violation ({first['check']}): {first['text']}")
        lines.extend(f"    {o}" for o in first["ops"][:8])
    return "\n".join(lines)


def render_checks(verdict: dict[str, Any]) -> list[str]:
    """The table of checks: one line each, its name, verdict and what it found."""
    lines = [f"  {'check':18s} {'verdict':8s} problems"]
    for c in verdict.get("checks", []):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c["kinds"].items()))
        lines.append(f"  {c['name']:18s} {c['verdict']:8s} {c['problems']}"
                     + (f" ({kinds})" if kinds else ""))
    return lines


def save_inputs(out: Path, logs: dict[str, str], status: dict[str, Any],
                final: dict[str, Any] | None,
                overrides: list[dict[str, Any]] | None = None) -> None:
    """What the verdict needs besides the histories, so ``ftds chaos check`` judges it all."""
    replicas = out / "replicas"
    if replicas.exists():
        shutil.rmtree(replicas)
    replicas.mkdir(parents=True)
    for rid, text in logs.items():
        (replicas / f"{rid}.log").write_text(text)
    (out / "status.json").write_text(json.dumps(status, indent=2, default=str))
    (out / "final.json").write_text(json.dumps(final, indent=2, default=str))
    (out / "overrides.json").write_text(json.dumps(overrides or [], indent=2))


def write_report(out: Path, report: dict[str, Any], ops: list[Op], events: list[FaultEvent],
                 incidents: list[dict[str, Any]]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.txt").write_text(render_text(report) + "\n")
    try:
        from .timeline import plot
    except ImportError:
        return
    plot(out / "timeline.png", ops, events, report["incidents"], report["settings"])


class NothingToCheck(Exception):
    """A re-check found no recorded operation to judge."""


def recheck(out: Path) -> dict[str, Any]:
    """Judge a saved run again from its files: the histories, and when saved with them the
    replicas' logs (``replicas/``), final statuses and counter values; a check without its
    input is SKIPPED. No history at all is an error, never a valid run."""
    if not out.is_dir():
        raise NothingToCheck(f"no histories to check: {out} is not a directory")
    histories = out / "histories"
    if not histories.is_dir() and any(out.glob("*.jsonl")):
        # Given the histories themselves: a run's other inputs sit beside its histories/.
        histories = out
        out = out.parent if out.name == "histories" else out
    paths = sorted(histories.glob("*.jsonl"))
    if not paths:
        raise NothingToCheck(f"no histories to check: no .jsonl files in {histories}")
    try:
        ops = load(paths)
    except (ValueError, KeyError, OSError) as exc:
        raise NothingToCheck(f"unreadable history in {histories}: {exc}") from exc
    if not ops:
        raise NothingToCheck(f"no histories to check: the .jsonl files in {histories} hold no "
                             "operation")
    replicas = out / "replicas"
    logs = ({p.stem: p.read_text(errors="replace") for p in sorted(replicas.glob("*.log"))}
            if replicas.is_dir() else None)
    status = json.loads((out / "status.json").read_text()) \
        if (out / "status.json").is_file() else None
    final_path = out / "final.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else None
    overrides_path = out / "overrides.json"
    overrides = json.loads(overrides_path.read_text()) if overrides_path.is_file() else None
    verdict = judge(ops, logs, status, final, final_expected=final_path.is_file(),
                    overrides=overrides)
    return {"dir": str(out), "operations": len(ops), "keys": verdict["keys_checked"]} | verdict
