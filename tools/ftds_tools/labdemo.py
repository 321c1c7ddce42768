"""The lab demo: the course's Milestone 5 on real systemd hosts.

Run by ``scripts/demo`` after the lab is up and deployed; it leaves the lab running.

Bootstrapping / steady state v1 (every replica ready, a primary) -> steady state v2 (clients C1,
C2, C3 on the client host, each sending every request to every replica) -> three faults one after
another, each followed by waiting until the cluster is healthy again (every replica ready, a
primary) before the next:

1. ``systemctl stop ftds-replica@<backup>`` on that backup's host: the RM starts it again over SSH;
2. kill -9 of the primary's process (``systemctl kill -s KILL``): the RM promotes a backup and
   relaunches the killed replica, which comes back as a backup;
3. a power cut of the new primary's host (``scripts/lab crash``), powered on again
   (``scripts/lab start``) once the RM named a new primary: the host boots its replica, which
   catches up and is admitted again.

The clients record every operation (``ftds workload --history``) on the client host; at the end
the histories are fetched, parsed (``chaos.history``) and drawn with the faults and the RM's
incidents on one timeline, ``run/demo/timeline.png``. Every time here is wall-clock time
(``time.time()``): the controller's fault times, the clients' ``wall`` on the client host and the
RM's incident times on the manager host. The lab hosts are containers on the controller's kernel,
so they all read the same clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftds.config import ClusterConfig, load_config
from ftds.rmclient import reset_budgets, rm_request
from ftds.status import incidents_text, status_text

from .chaos.history import Op, load
from .chaos.nemesis import LAB_KINDS, FaultEvent, LabTarget
from .labenv import REPO, Lab, LabError

CLIENTS = ("C1", "C2", "C3")
FTDS = "/opt/ftds/bin/ftds"  # the deployed tool on every lab host
REMOTE_DIR = "/tmp/ftds-demo"  # on the client host: the clients' histories and pid files
OUT = REPO / "run" / "demo"  # on the controller: histories, report.json, timeline.png
RATE = 5.0  # requests/s of each client
KEYS = 3
SHOWN_LINES = 8  # course lines shown per client in steady state v2; later only retries etc.
STEADY = 3.0  # seconds of steady state v2 before the first fault, and between faults
HEALTHY_TIMEOUT = 60.0  # after each fault, for every replica ready again
NEW_PRIMARY_TIMEOUT = 20.0  # after a fault of the primary, for the RM to name another
STOP_TIMEOUT = 45.0  # for the clients to finish their last request and print their summary
NEEDLES = ("members", "RM: ", "GFD:")  # the RM/GFD journal lines shown after each fault


@dataclass(frozen=True)
class Step:
    kind: str  # a fault kind of the lab target (chaos.nemesis.LAB_KINDS)
    victim: str  # backup | primary
    title: str  # how the banner says it ({victim}, {host}, {role})
    power_on: bool = False  # the fault powered the host off: power it on (scripts/lab start)


STEPS = (
    Step("systemctl_stop", "backup", "systemctl stop ftds-replica@{victim} on {host} "
                                     "(a backup)"),
    Step("kill_primary", "primary", "kill -9 of {victim}, the {role} "
                                    "(systemctl kill -s KILL on {host})"),
    Step("power_cut", "primary", "power cut of {host}, the host of {victim}, the {role} "
                                 "(scripts/lab crash {host})", power_on=True),
)


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what happened and where to look."""


# ============================================================ pure parts (unit-tested) ====
def is_healthy(status: dict[str, Any] | None) -> bool:
    """A primary, no failover under way, a stable GFD, and every replica ready."""
    return bool(status and status.get("primary") and not status.get("failover_pending")
                and status.get("gfd_stable") and status.get("replicas")
                and all(r.get("ready") for r in status["replicas"].values()))


def role_name(status: dict[str, Any]) -> str:
    return "sequencer" if status.get("mode") == "active" else "primary"


def choose_victim(status: dict[str, Any], victim: str) -> tuple[str, str]:
    """(replica, role) for a fault of the ``primary`` or of a ``backup`` (the first ready one
    by name) in a healthy status; ValueError when there is none."""
    primary = status.get("primary")
    if not primary:
        raise ValueError("the RM names no primary: nothing to fault")
    if victim == "primary":
        return primary, "primary"
    if victim != "backup":
        raise ValueError(f"unknown victim {victim!r} (primary or backup)")
    replicas = status.get("replicas") or {}
    backups = sorted(r for r in replicas if r != primary)
    ready = [r for r in backups if replicas[r].get("ready")]
    if not (ready or backups):
        raise ValueError(f"no backup: {primary} is the only replica")
    return (ready or backups)[0], "backup"


def incarnation(status: dict[str, Any] | None, replica: str) -> str | None:
    return ((status or {}).get("replicas") or {}).get(replica, {}).get("incarnation")


def took_over(status: dict[str, Any] | None, before: dict[str, Any]) -> str | None:
    """The new primary once the RM replaced ``before``'s (a later epoch, another replica)."""
    if not status or not status.get("primary"):
        return None
    if status["primary"] != before["primary"] and status["epoch"] > before["epoch"]:
        return str(status["primary"])
    return None


def back_again(status: dict[str, Any] | None, before: dict[str, Any], victim: str,
               seen_down: bool) -> bool:
    """Healthy again after a fault of ``victim``: every replica ready and the victim a new
    process (a new incarnation), or, with no incarnation known, seen down since the fault.
    Without this a status taken before the RM noticed the fault would pass for recovered."""
    if not is_healthy(status):
        return False
    old = incarnation(before, victim)
    if old is not None:
        return incarnation(status, victim) not in (None, old)
    return seen_down


def is_down(status: dict[str, Any] | None, victim: str) -> bool:
    """The status shows ``victim`` gone or not ready (no status says nothing)."""
    if status is None:
        return False
    replica = (status.get("replicas") or {}).get(victim)
    return replica is None or not replica.get("ready") or not replica.get("present", True)


def make_event(kind: str, victim: str, role: str, injected: float,
               before: dict[str, Any], *, host: str, note: str = "",
               new_primary: str | None = None, new_primary_at: float | None = None,
               recovered: float | None = None, healthy: float | None = None,
               after: dict[str, Any] | None = None) -> FaultEvent:
    """One fault of the demo as the chaos tools record it (timeline, report): wall-clock times;
    ``recovered`` is when the fault itself was over (the host powered on again; for a stop or a
    kill, once the command returned: the RM does the rest), ``healthy`` when every replica was
    ready again."""
    extra: dict[str, Any] = {"host": host}
    if new_primary is not None and new_primary_at is not None:
        extra["new_primary"] = new_primary
        extra["new_primary_s"] = round(new_primary_at - injected, 3)
    if healthy is not None:
        extra["ready_s"] = round(healthy - injected, 3)
    return FaultEvent(kind=kind, victim=victim, role=role, injected=injected,
                      recovered=recovered, healthy=healthy, epoch_before=before["epoch"],
                      epoch_after=(after or before)["epoch"], note=note, extra=extra)


def fault_line(n: int, event: FaultEvent) -> str:
    """One line per fault: what, where, how long to a new primary and to every replica ready."""
    parts = []
    if "new_primary" in event.extra:
        parts.append(f"new primary {event.extra['new_primary']} after "
                     f"{event.extra['new_primary_s']:.1f}s")
    elif event.role == "primary":
        parts.append("no new primary seen")
    if event.healthy is not None:
        parts.append(f"every replica ready again after {event.healthy - event.injected:.1f}s")
    else:
        parts.append("NOT healthy again")
    where = f"{event.victim} ({event.role}) on {event.extra.get('host', '?')}"
    return (f"  {n}. {event.kind:15s} {where:22s} {', '.join(parts)}; epoch "
            f"{event.epoch_before}->{event.epoch_after}")


def demo_incidents(incidents: Iterable[dict[str, Any]], started: float,
                   slack: float = 1.0) -> list[dict[str, Any]]:
    """The RM's incidents detected since the demo started (the RM keeps older ones too)."""
    return sorted((i for i in incidents if (i.get("detected") or 0) >= started - slack),
                  key=lambda i: (i.get("detected") or 0, i.get("id") or 0))


def incident_for(incidents: Iterable[dict[str, Any]], victim: str,
                 injected: float, slack: float = 0.5) -> dict[str, Any] | None:
    """The RM's first incident about ``victim`` detected after the fault was injected."""
    found = [i for i in incidents
             if i.get("replica") == victim and (i.get("detected") or 0) >= injected - slack]
    return min(found, key=lambda i: i["detected"]) if found else None


def incident_line(incident: dict[str, Any], injected: float) -> str:
    def ms(name: str) -> str:
        value = incident.get(name)
        return "-" if value is None else f"{value:.0f} ms"
    return (f"  the RM's incident #{incident.get('id')}: detected "
            f"{incident['detected'] - injected:.2f}s after the fault ({incident.get('cause')}); "
            f"detect->new primary {ms('detect_to_new_primary_ms')}, relaunch->ready "
            f"{ms('relaunch_to_ready_ms')}, detect->ready {ms('detect_to_ready_ms')}")


def journal_lines(text: str, since: float, until: float,
                  needles: tuple[str, ...] = NEEDLES) -> list[str]:
    """The messages of ``journalctl -o json`` output logged in [since, until] (wall clock, as
    ``__REALTIME_TIMESTAMP``) that contain one of ``needles``."""
    lines = []
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
            at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        except (ValueError, KeyError, TypeError):
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald's form of a message that is not UTF-8
            message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode(
                "utf-8", "replace")
        if not isinstance(message, str) or not since <= at <= until:
            continue
        if any(n in message for n in needles):
            lines.append(message)
    return lines


def client_command(name: str, prefix: str, rate: float = RATE, keys: int = KEYS,
                   directory: str = REMOTE_DIR) -> str:
    """The shell command on the client host for one client: its pid in a file (the shell
    execs the workload, so the pid is the workload's), then ``ftds workload`` with a history."""
    args = [FTDS, "workload", "--config", "/etc/ftds/cluster.yml", "--id", name,
            "--clients", "1", "--rate", f"{rate:g}", "--duration", "86400", "--keys",
            str(keys), "--prefix", prefix, "--history", f"{directory}/{name}.jsonl", "--json"]
    return f"echo $$ > {directory}/{name}.pid && exec {shlex.join(args)}"


def signal_clients(sig: str, directory: str = REMOTE_DIR) -> str:
    """Shell: send ``sig`` to the demo's clients by their pid files (only to a pid that still
    is an ``ftds workload``, never to whatever reused the number)."""
    return (f'for f in {directory}/*.pid; do [ -e "$f" ] || continue; p=$(cat "$f"); '
            f'grep -qa workload "/proc/$p/cmdline" 2>/dev/null && kill -{sig} "$p"; done; true')


INTERESTING = ("retrying", "no reply", "lost", "reconnect", "refused", "WARNING", "ERROR",
               "CRITICAL", "Traceback", "error:")


def interesting_client_line(line: str) -> bool:
    """A client line worth showing while faults run: a retry, a lost connection, an error
    (not the steady stream of Sent/Received lines)."""
    return any(word in line for word in INTERESTING)


def history_counts(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
    """Per client (its process name): operations ok / fail (answered with an error) / info
    (never answered: outcome unknown)."""
    counts: dict[str, dict[str, int]] = {}
    for op in ops:
        row = counts.setdefault(op.process, {"ok": 0, "fail": 0, "info": 0})
        row[op.outcome] = row.get(op.outcome, 0) + 1
    return counts


def longest_gap(ops: Iterable[Op]) -> dict[str, float]:
    """Per client: the longest time (s) between two acknowledgements, from the history."""
    ends: dict[str, list[float]] = collections.defaultdict(list)
    for op in ops:
        if op.outcome == "ok" and not math.isinf(op.complete):
            ends[op.process].append(op.complete)
    gaps = {}
    for process, times in ends.items():
        times.sort()
        gaps[process] = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return gaps


def client_line(name: str, summary: dict[str, Any] | None,
                counts: dict[str, int] | None = None, gap: float | None = None) -> str:
    if not summary:
        return f"  {name}: no summary (the client did not finish normally)"
    line = (f"  {name}: {summary.get('acked', 0)} requests acknowledged, "
            f"{summary.get('failed', 0)} failed, {summary.get('retries', 0)} retried with the "
            f"same request_num, {summary.get('duplicates', 0)} duplicate replies discarded")
    if gap is not None:
        line += f", longest gap between acknowledgements {gap:.1f}s"
    if counts is not None:
        line += (f"; history: {counts['ok']} ok, {counts['fail']} failed, {counts['info']} "
                 "unanswered")
    return line


def verdict(*, faults: int, events: list[FaultEvent], summaries: dict[str, dict[str, Any] | None],
            ops: list[Op], counts: dict[str, dict[str, int]],
            failure: str | None = None) -> str | None:
    """None when the demo showed what it should, else the one-line reason it did not: the
    cluster did not recover from every fault, or a client failed a request, gave one up or
    ended early."""
    if failure:
        return failure
    for n, event in enumerate(events, 1):
        if event.healthy is None:
            return (f"the cluster did not recover from fault {n} ({event.kind} of "
                    f"{event.victim}) within {HEALTHY_TIMEOUT:g}s")
    if len(events) < faults:
        return f"only {len(events)} of the {faults} faults ran"
    for name, summary in summaries.items():
        if not summary:
            return f"client {name} ended without its summary"
        if summary.get("failed"):
            return f"client {name} saw {summary['failed']} failed requests"
    if not ops:
        return "the clients' histories hold no operation"
    for name, row in sorted(counts.items()):
        if row.get("fail"):
            return f"client {name}'s history has {row['fail']} failed requests"
        if row.get("info"):
            return f"client {name}'s history has {row['info']} requests never answered"
    return None


# ========================================================================== the lab run ====
def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


class Clients:
    """C1..C3 as ``ftds workload`` on the client host, each over its own SSH connection; their
    stderr (the course's lines) streamed with a prefix: the first few lines of each, then only
    what is worth seeing while faults run."""

    def __init__(self, lab: Lab, host: str, prefix: str) -> None:
        self.lab = lab
        self.host = host
        self.prefix = prefix
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.readers: dict[str, threading.Thread] = {}
        self.tails: dict[str, collections.deque[str]] = {}
        self.stopped = False

    def start(self) -> None:
        self.lab.ssh(self.host, f"{signal_clients('KILL')}; rm -rf {REMOTE_DIR} && "
                                f"mkdir -p {REMOTE_DIR}", shared=True)
        for name in CLIENTS:
            proc = subprocess.Popen(
                ["ssh", "-F", str(self.lab.ssh_config), "-o", "ControlMaster=no",
                 "-o", "ControlPath=none", self.host, client_command(name, self.prefix)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            self.procs[name] = proc
            self.tails[name] = collections.deque(maxlen=5)
            reader = threading.Thread(target=self._stream, args=(name, proc), daemon=True)
            reader.start()
            self.readers[name] = reader

    def _stream(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        shown = 0
        for line in proc.stderr:
            self.tails[name].append(line.rstrip())
            if shown < SHOWN_LINES or interesting_client_line(line):
                shown += 1
                print(f"  {self.host} {name} | {line.rstrip()}", flush=True)

    def dead(self) -> dict[str, int]:
        """Clients that ended already (name -> exit status): they should run throughout."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def check_running(self) -> None:
        dead = self.dead()
        if dead:
            name, code = next(iter(sorted(dead.items())))
            last = self.tails[name][-1] if self.tails[name] else "no output"
            raise DemoError(f"client {name} on {self.host} ended (exit {code}): {last}")

    def stop(self) -> dict[str, dict[str, Any] | None]:
        """SIGINT to every client (each finishes its outstanding request and prints its
        summary); those not done in STOP_TIMEOUT are killed. Never raises."""
        self.stopped = True
        summaries: dict[str, dict[str, Any] | None] = {}
        try:
            self.lab.ssh(self.host, signal_clients("INT"), check=False, timeout=30)
        except (LabError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"  could not signal the clients on {self.host}: {exc}")
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  client {name} did not stop within {STOP_TIMEOUT:g}s: killing it")
                self.kill()
            summaries[name] = self._summary(name, proc)
        return summaries

    def _summary(self, name: str, proc: subprocess.Popen[str]) -> dict[str, Any] | None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self.readers[name].join(5)
        out = proc.stdout.read() if proc.stdout is not None else ""
        try:
            summary = json.loads(out) if out.strip() else None
        except ValueError:
            summary = None
        return summary if isinstance(summary, dict) else None

    def kill(self) -> None:
        """SIGKILL to the clients on the host and their SSH connections here. Never raises."""
        with contextlib.suppress(LabError, OSError, subprocess.TimeoutExpired):
            self.lab.ssh(self.host, signal_clients("KILL"), check=False, timeout=30)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()

    def fetch_histories(self, dest: Path) -> list[Path]:
        paths = []
        for name in self.procs:
            result = self.lab.ssh(self.host, f"cat {REMOTE_DIR}/{name}.jsonl", check=False,
                                  shared=True, timeout=120)
            if result.returncode != 0:
                print(f"  no history of {name} on {self.host}: {result.stderr.strip()}")
                continue
            path = dest / f"{name}.jsonl"
            path.write_text(result.stdout)
            paths.append(path)
        return paths


class Demo:
    def __init__(self, lab: Lab, config: ClusterConfig) -> None:
        self.lab = lab
        self.config = config
        self.key = config.read_key()
        self.target = LabTarget(lab)

    # -- the RM ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return asyncio.run(rm_request(self.config, self.key, "status_req", timeout=2.0))
        except (OSError, TimeoutError, ConnectionError):
            return None

    def incidents(self) -> list[dict[str, Any]]:
        try:
            reply = asyncio.run(rm_request(self.config, self.key, "incidents_req", timeout=5.0))
        except (OSError, TimeoutError, ConnectionError) as exc:
            print(f"  the RM did not give its incidents: {exc}")
            return []
        return list(reply.get("incidents") or [])

    def wait(self, test: Callable[[dict[str, Any] | None], Any], timeout: float,
             interval: float = 0.05) -> dict[str, Any] | None:
        """The first status that passes ``test`` (a test may note what it saw), or None."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            if test(s):
                return s
            if time.monotonic() > deadline:
                return None
            time.sleep(interval)

    def wait_healthy(self, timeout: float, what: str) -> dict[str, Any]:
        s = self.wait(is_healthy, timeout)
        if s is None:
            raise DemoError(f"the cluster was not healthy within {timeout:g}s {what}; see "
                            f"`ssh -F inventory/lab/ssh_config {self.lab.manager} ftds status`")
        return s

    def journal(self, since: float, until: float) -> list[str]:
        """The RM's and GFD's decisions logged in [since, until]."""
        try:
            text = self.lab.ssh(self.lab.manager, f"journalctl -u ftds-rm -u ftds-gfd --since "
                                                  f"@{int(since) - 1} -o json --no-pager",
                                check=False, shared=True, timeout=30).stdout
        except (LabError, OSError, subprocess.TimeoutExpired) as exc:
            return [f"(the journal of {self.lab.manager} could not be read: {exc})"]
        return journal_lines(text, since, until)

    # -- one fault ---------------------------------------------------------------------------
    def fault(self, n: int, step: Step, clients: Clients) -> FaultEvent:
        before = self.wait_healthy(HEALTHY_TIMEOUT, f"before fault {n}")
        clients.check_running()
        try:
            asyncio.run(reset_budgets(self.config, self.key))  # faults on purpose, not a loop
        except Exception as exc:
            print(f"  (could not reset the restart budgets: {exc})")
        victim, role = choose_victim(before, step.victim)
        host = self.lab.host_of(victim)
        shown_role = role_name(before) if role == "primary" else role
        banner(f"Fault {n} of {len(STEPS)}: " + step.title.format(victim=victim, host=host,
                                                                    role=shown_role))
        kind = LAB_KINDS[step.kind]
        injected = time.time()
        note = self.target.inject(kind, victim, before["primary"])
        print(f"  {note} ({time.time() - injected:.2f}s); the clients keep going", flush=True)

        new_primary = new_primary_at = None
        if role == "primary":
            s = self.wait(lambda st: took_over(st, before), NEW_PRIMARY_TIMEOUT, 0.02)
            if s is None:
                print(f"  no new {shown_role} within {NEW_PRIMARY_TIMEOUT:g}s", flush=True)
            else:
                new_primary, new_primary_at = s["primary"], time.time()
                print(f"  the RM named {new_primary} the new {shown_role} (epoch {s['epoch']}) "
                      f"{new_primary_at - injected:.2f}s after the fault", flush=True)
        if step.power_on:  # the host is off: power it on again (scripts/lab start)
            print(f"  scripts/lab start {host} (power back on; its replica starts at boot)",
                  flush=True)
            powered = time.time()
            self.target.recover(kind, victim)
            print(f"  {host} booted, ssh ready in {time.time() - powered:.1f}s", flush=True)
        recovered = time.time()

        seen = {"down": False}

        def back(st: dict[str, Any] | None) -> bool:
            seen["down"] = seen["down"] or is_down(st, victim)
            return back_again(st, before, victim, seen["down"])

        after = self.wait(back, HEALTHY_TIMEOUT)
        healthy = time.time() if after is not None else None
        event = make_event(step.kind, victim, role, injected, before, host=host, note=note,
                           new_primary=new_primary, new_primary_at=new_primary_at,
                           recovered=recovered, healthy=healthy, after=after)
        if healthy is None:
            banner(f"Fault {n}: NOT healthy again within {HEALTHY_TIMEOUT:g}s")
        else:
            banner(f"Fault {n} recovered: {victim} back, every replica ready again after "
                   f"{healthy - injected:.1f}s")
        for line in self.journal(injected - 0.05, time.time()):
            print(f"  {self.lab.manager} | {line}")
        incident = incident_for(self.incidents(), victim, injected)
        if incident is not None:
            print(incident_line(incident, injected))
        s = after or self.status()
        if s:
            print(status_text(s))
        return event

    # -- the whole story ---------------------------------------------------------------------
    def run(self) -> int:
        lab = self.lab
        client_host = lab.clients[0]
        hosts = ", ".join(f"{r} on {h}" for r, h in sorted(lab.replica_hosts.items()))
        banner(f"The lab: {hosts}; GFD and RM on {lab.manager}; clients on {client_host}")
        banner("Bootstrapping / steady state v1: every replica ready, a primary")
        print(status_text(self.wait_healthy(HEALTHY_TIMEOUT, "at the start")))

        OUT.mkdir(parents=True, exist_ok=True)
        histories = OUT / "histories"
        shutil.rmtree(histories, ignore_errors=True)
        histories.mkdir()
        (OUT / "timeline.png").unlink(missing_ok=True)

        banner(f"Steady state v2: clients C1, C2, C3 on {client_host} (every request to every "
               "replica)")
        print(f"  (the first {SHOWN_LINES} lines of each client; then only their retries, "
              "lost connections and errors)")
        clients = Clients(lab, client_host, prefix=f"demo{int(time.time())}-")
        events: list[FaultEvent] = []
        failure: str | None = None
        started = time.time()
        summaries: dict[str, dict[str, Any] | None] = {}
        try:
            clients.start()
            time.sleep(STEADY)
            clients.check_running()
            for n, step in enumerate(STEPS, 1):
                event = self.fault(n, step, clients)
                events.append(event)
                if event.healthy is None:
                    break
                time.sleep(STEADY)
            clients.check_running()
        except (DemoError, LabError, ValueError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
            banner("The demo stopped early")
            print(f"  {failure}")
        finally:
            try:
                self.target.heal_all()  # a host still powered off is started again
            except (LabError, subprocess.TimeoutExpired) as exc:
                print(f"  could not power the lab's hosts on again: {exc}")
                failure = failure or f"a host stayed off: {exc}"
            if clients.procs:
                summaries = clients.stop()
            else:
                clients.kill()
        return self.report(clients, events, summaries, started, histories, failure)

    def report(self, clients: Clients, events: list[FaultEvent],
               summaries: dict[str, dict[str, Any] | None], started: float, histories: Path,
               failure: str | None) -> int:
        lab = self.lab
        ops: list[Op] = []
        try:
            ops = load(clients.fetch_histories(histories))
        except (LabError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            print(f"  the clients' histories could not be read: {exc}")
        counts = history_counts(ops)
        gaps = longest_gap(ops)
        incidents = demo_incidents(self.incidents(), started)

        banner("Milestone 5: three faults, the clients running throughout")
        for n, event in enumerate(events, 1):
            print(fault_line(n, event))
        banner(f"ftds incidents (the RM on {lab.manager}; this demo's)")
        print(incidents_text(incidents))
        banner(f"ftds status (on {lab.manager})")
        try:
            print(lab.ssh(lab.manager, "ftds status", check=False, shared=True).stdout.rstrip())
        except (LabError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"  {exc}")
        banner(f"The clients (their histories: {histories.resolve()})")
        for name in CLIENTS:
            print(client_line(name, summaries.get(name), counts.get(name), gaps.get(name)))

        timeline = (OUT / "timeline.png").resolve()
        (OUT / "report.json").write_text(json.dumps({
            "started": started, "events": [e.to_json() for e in events],
            "incidents": incidents, "clients": summaries, "history_counts": counts,
        }, indent=2, default=str))
        try:
            from .chaos.timeline import plot

            plot(timeline, ops, events, incidents,
                 {"target": "lab", "mode": self.config.mode, "schedule": "milestone5 demo",
                  "seed": "-"})
        except Exception as exc:  # the picture is a bonus: its failure fails nothing else
            print(f"  the timeline could not be drawn: {exc}")

        s = self.status()
        primary = (s or {}).get("primary") or sorted(lab.replica_hosts)[0]
        primary_host = lab.host_of(primary)
        print(f"""
The lab keeps running. Try:
  ssh -F inventory/lab/ssh_config {lab.manager} ftds status
  ssh -F inventory/lab/ssh_config {primary_host} systemctl stop ftds-replica@{primary}
  scripts/lab crash {primary_host}; scripts/lab start {primary_host}
  scripts/lab partition {primary_host}; scripts/lab heal
  ftds chaos run --target lab --faults 10      (after deploying with executions traced)
Take it down with: scripts/lab down""")
        if timeline.exists():
            print(f"\nThe run's timeline: {timeline}")
        else:
            print(f"\nThe run's timeline: not drawn (no operation was recorded); see {OUT}")
        reason = verdict(faults=len(STEPS), events=events, summaries=summaries, ops=ops,
                         counts=counts, failure=failure)
        if reason:
            print(f"scripts/demo: FAILED: {reason}")
            return 1
        print(f"Milestone 5 on the lab: {len(events)} faults, every one recovered; "
              f"{sum(c['ok'] for c in counts.values())} operations acknowledged, none failed.")
        return 0


def main() -> int:
    try:
        lab = Lab()
        with tempfile.TemporaryDirectory(prefix="ftds-demo-") as work:
            config = load_config(lab.fetch_cluster(Path(work)))
            return Demo(lab, config).run()
    except (LabError, DemoError, subprocess.TimeoutExpired) as exc:
        print(f"scripts/demo: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scripts/demo: interrupted (the clients were stopped; the lab keeps running)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
