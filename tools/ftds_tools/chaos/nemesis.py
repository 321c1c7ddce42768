"""The nemesis: faults injected into a running cluster, and the schedules that order them.

Two targets: the embedded cluster (processes on this machine) and the lab (systemd hosts reached
over SSH, host faults through ``scripts/lab``). Each fault kind is a pair of actions (inject,
recover) plus how long the fault is held; kills need no recovery action, the RM brings the
replica back. Every injection is timed on the wall clock for the report and the timeline.

Partitions exist on both targets. A host is a replica with its LFD (``hN``) or the manager
(``m``: GFD and RM). The lab cuts hosts with nftables (``scripts/lab partition``); the embedded
cluster's daemons dial each other through the run's link proxies (``linkproxy``), which hold the
bytes of a cut direction (TCP stays up, as when packets are dropped) and deliver them, in order,
at the heal. The kinds, each held 1-3 s then healed:

- ``partition``: the primary's host cut from every other host, both ways (the RM must depose it;
  it must stop acknowledging when its lease runs out);
- ``partition_backup``: the same for a backup's host;
- ``partition_from_rm``: the primary's host cut from the manager host only, both ways;
- ``partition_from_primary``: a backup's host cut from the primary's host only, both ways;
- ``cut_oneway`` (local target): the primary's host -> a backup's host held, the other way open
  (the backup's acknowledgements reach the primary, its stream does not reach the backup).

*Compound* kinds overlap faults: they are scripts (``run_compound``) that watch the RM's status
and strike again while the cluster is still recovering, built from each target's primitives
(kill, pause, resume a replica; kill a manager daemon):

- ``fault_during_recovery``: kill -9 of the primary, then, as soon as the RM announced the new
  primary (or once the relaunched replica is up but still catching up), kill -9 of the new
  primary or of a backup;
- ``primary_crash_backups_out``: SIGSTOP of every backup until the RM dropped them from the
  ready set, the primary acknowledging alone for a moment, kill -9 of the primary, SIGCONT of
  the backups. No replica then holds every acknowledged write: the RM must refuse to promote
  (``unavailable``); the nemesis records that and heals it as an operator would, with
  ``force_primary`` and ``accept_data_loss``, and hands the checker the override (which old
  primary, which epoch, when its backups stopped and when it was killed) so that exactly the
  writes acknowledged by the lone primary may be lost (``checks.excuse_forced_loss``);
- ``rm_restart_with_replica_crash`` / ``gfd_restart_with_replica_crash``: kill -9 of the RM (or
  GFD) and of a replica at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ftds import ctl, local
from ftds.config import ClusterConfig
from ftds.rmclient import RMRefused, rm_request

from ..labenv import Lab
from .linkproxy import LinkProxyThread, host_of


@dataclass
class FaultEvent:
    kind: str
    victim: str
    role: str  # primary / backup / manager
    injected: float
    recovered: float | None = None
    healthy: float | None = None
    epoch_before: int = 0
    epoch_after: int = 0
    note: str = ""
    # Compound faults: the second victim, the RM's outcome, an operator override, timings.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Kind:
    name: str
    victim: str  # primary | backup | any | manager
    hold: tuple[float, float] = (0.0, 0.0)  # seconds the fault lasts before recovery
    weight: float = 1.0
    compound: bool = False  # a script of several faults (run_compound), not inject/recover


class Target(Protocol):
    name: str
    kinds: dict[str, Kind]

    def inject(self, kind: Kind, victim: str, primary: str) -> str: ...
    def recover(self, kind: Kind, victim: str) -> None: ...
    def heal_all(self) -> None: ...
    # The primitives compound faults are built from.
    def kill_replica(self, rid: str) -> str: ...
    def pause_replica(self, rid: str) -> str: ...
    def resume_replica(self, rid: str) -> str: ...
    def kill_manager(self, daemon: str) -> str: ...


COMPOUND_KINDS = {
    # Not held: each is a script that waits on the RM's status between its steps.
    "fault_during_recovery": Kind("fault_during_recovery", "primary", compound=True),
    "primary_crash_backups_out": Kind("primary_crash_backups_out", "primary", (0.2, 0.5),
                                      compound=True),
}
RESTART_WITH_CRASH = {
    "rm_restart_with_replica_crash": Kind("rm_restart_with_replica_crash", "any"),
    "gfd_restart_with_replica_crash": Kind("gfd_restart_with_replica_crash", "any"),
}


# ===================================================================== local target ====
LOCAL_KINDS = {
    "kill": Kind("kill", "any", weight=3),
    "kill_primary": Kind("kill_primary", "primary", weight=2),
    "stop": Kind("stop", "any", weight=1),  # SIGTERM: a clean stop, like systemctl stop
    "pause": Kind("pause", "primary", (0.8, 1.5), weight=2),
    "pause_backup": Kind("pause_backup", "backup", (0.5, 1.0), weight=1),
    "kill_lfd": Kind("kill_lfd", "any", weight=1),
    "kill_gfd": Kind("kill_gfd", "manager", weight=1),
    "kill_rm": Kind("kill_rm", "manager", weight=1),
    # Through the run's link proxies; held like the lab's nftables partitions.
    "partition": Kind("partition", "primary", (1.5, 3.0), weight=2),
    "partition_backup": Kind("partition_backup", "backup", (1.0, 2.0), weight=1),
    "partition_from_rm": Kind("partition_from_rm", "primary", (1.5, 3.0), weight=2),
    "partition_from_primary": Kind("partition_from_primary", "backup", (1.5, 3.0), weight=1),
    "cut_oneway": Kind("cut_oneway", "backup", (1.5, 3.0), weight=1),
    **RESTART_WITH_CRASH,
    **COMPOUND_KINDS,
}
PARTITION_KINDS = ("partition", "partition_backup", "partition_from_rm",
                   "partition_from_primary", "cut_oneway")


class LocalTarget:
    name = "local"
    kinds = LOCAL_KINDS

    def __init__(self, run_dir: Path, links: LinkProxyThread | None = None) -> None:
        self.run_dir = run_dir
        self.links = links  # the cluster's link proxies: partitions need them
        self._paused: set[int] = set()
        self._paused_by: dict[str, int] = {}

    def _partition(self, name: str, victim: str, primary: str) -> str:
        links = self.links
        if links is None:
            raise RuntimeError(f"{name} needs the run's link proxies (a cluster started by "
                               "ftds chaos run)")
        host, primary_host = host_of(victim), host_of(primary)
        if name in ("partition", "partition_backup"):
            others = [h for h in links.hosts if h != host]
            links.cut_both(host, others)
            return f"{host} ({victim}) cut from every other host ({', '.join(others)})"
        if name == "partition_from_rm":
            links.cut_both(host, ["m"])
            return f"{host} ({victim}) cut from m (GFD/RM) only"
        if name == "partition_from_primary":
            links.cut_both(host, [primary_host])
            return f"{host} ({victim}) cut from the primary's host {primary_host} only"
        links.cut(primary_host, host)
        return (f"{primary_host} -> {host} held ({primary}'s stream to {victim}), "
                f"{host} -> {primary_host} open")

    def _pid(self, name: str) -> int:
        pid = local.read_pid(self.run_dir, name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    def kill_replica(self, rid: str) -> str:
        os.kill(self._pid(rid), signal.SIGKILL)
        return f"kill -9 {rid}"

    def pause_replica(self, rid: str) -> str:
        pid = self._pid(rid)
        os.kill(pid, signal.SIGSTOP)
        self._paused.add(pid)
        self._paused_by[rid] = pid
        return f"SIGSTOP {rid}"

    def resume_replica(self, rid: str) -> str:
        pid = self._paused_by.pop(rid, None)  # the process stopped, not what the pid file says now
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._paused.discard(pid)
        return f"SIGCONT {rid}"

    def kill_manager(self, daemon: str) -> str:
        os.kill(self._pid(daemon.upper()), signal.SIGKILL)
        return f"kill -9 {daemon.upper()}"

    def inject(self, kind: Kind, victim: str, primary: str) -> str:
        name = kind.name
        if name in ("kill", "kill_primary"):
            os.kill(self._pid(victim), signal.SIGKILL)
            return f"kill -9 {victim}"
        if name in RESTART_WITH_CRASH:
            # Both at once: the replica's loss reaches a manager that is itself restarting.
            daemon = name.split("_")[0]
            pids = (self._pid(daemon.upper()), self._pid(victim))
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return f"kill -9 {daemon.upper()} and kill -9 {victim} together"
        if name == "stop":
            os.kill(self._pid(victim), signal.SIGTERM)
            return f"SIGTERM {victim}"
        if name in ("pause", "pause_backup"):
            pid = self._pid(victim)
            os.kill(pid, signal.SIGSTOP)
            self._paused.add(pid)
            return f"SIGSTOP {victim}"
        if name == "kill_lfd":
            os.kill(self._pid(f"LFD{victim[1:]}"), signal.SIGKILL)
            return f"kill -9 LFD{victim[1:]}"
        if name in ("kill_gfd", "kill_rm"):
            daemon = name.split("_")[1].upper()
            os.kill(self._pid(daemon), signal.SIGKILL)
            return f"kill -9 {daemon}"
        if name in PARTITION_KINDS:
            return self._partition(name, victim, primary)
        raise ValueError(f"unknown fault {name}")

    def recover(self, kind: Kind, victim: str) -> None:
        if kind.name in ("pause", "pause_backup", *PARTITION_KINDS):
            self.heal_all()

    def heal_all(self) -> None:
        if self.links is not None:
            self.links.heal_all()  # held bytes delivered, in order
        for pid in list(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._paused.discard(pid)
        self._paused_by.clear()


# ======================================================================= lab target ====
LAB_KINDS = {
    # primary_crash_backups_out stays local: its override is judged against the clients'
    # monotonic clock, which only the embedded cluster shares with the nemesis. The lab's
    # partitions are its own (nftables, both ways: no cut_oneway).
    **{k: v for k, v in LOCAL_KINDS.items()
       if k not in ("stop", "primary_crash_backups_out", *PARTITION_KINDS)},
    "systemctl_stop": Kind("systemctl_stop", "any", weight=2),
    "power_cut": Kind("power_cut", "any", (0.5, 1.5), weight=2),
    "host_stop": Kind("host_stop", "any", (0.5, 1.5), weight=1),
    "partition": Kind("partition", "primary", (1.5, 3.0), weight=2),
    "partition_backup": Kind("partition_backup", "backup", (1.0, 2.0), weight=1),
    "partition_from_rm": Kind("partition_from_rm", "primary", (1.5, 3.0), weight=2),
    "partition_from_primary": Kind("partition_from_primary", "backup", (1.5, 3.0), weight=1),
}


class LabTarget:
    """The nspawn lab: replicas on ftds_replicas hosts, GFD/RM on the manager host."""

    name = "lab"
    kinds = LAB_KINDS

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.manager = lab.manager
        self._paused: set[str] = set()
        self._down: set[str] = set()
        self._partitioned = False

    def kill_replica(self, rid: str) -> str:
        host = self.lab.replica_hosts[rid]
        self.lab.ssh(host, f"systemctl kill --signal=SIGKILL ftds-replica@{rid}.service")
        return f"{host}: systemctl kill -s KILL ftds-replica@{rid}"

    def pause_replica(self, rid: str) -> str:
        host = self.lab.replica_hosts[rid]
        self.lab.ssh(host, f"systemctl kill --signal=SIGSTOP ftds-replica@{rid}.service")
        self._paused.add(rid)
        return f"{host}: SIGSTOP ftds-replica@{rid}"

    def resume_replica(self, rid: str) -> str:
        host = self.lab.replica_hosts[rid]
        self.lab.ssh(host, f"systemctl kill --signal=SIGCONT ftds-replica@{rid}.service",
                     check=False)
        self._paused.discard(rid)
        return f"{host}: SIGCONT ftds-replica@{rid}"

    def kill_manager(self, daemon: str) -> str:
        self.lab.ssh(self.manager, f"systemctl kill --signal=SIGKILL ftds-{daemon}.service")
        return f"{self.manager}: kill -9 ftds-{daemon}"

    def inject(self, kind: Kind, victim: str, primary: str) -> str:
        name = kind.name
        lab = self.lab
        host = lab.replica_hosts.get(victim, self.manager)
        unit = f"ftds-replica@{victim}.service"
        if name in ("kill", "kill_primary"):
            lab.ssh(host, f"systemctl kill --signal=SIGKILL {unit}")
            return f"{host}: systemctl kill -s KILL {unit}"
        if name in RESTART_WITH_CRASH:
            # One SSH round trip apart: the manager restarts while the replica's loss arrives.
            daemon = name.split("_")[0]
            return f"{self.kill_manager(daemon)}; {self.kill_replica(victim)}"
        if name == "systemctl_stop":
            lab.ssh(host, f"systemctl stop {unit}")
            return f"{host}: systemctl stop {unit}"
        if name in ("pause", "pause_backup"):
            lab.ssh(host, f"systemctl kill --signal=SIGSTOP {unit}")
            self._paused.add(victim)
            return f"{host}: SIGSTOP {unit}"
        if name == "kill_lfd":
            lab.ssh(host, f"systemctl kill --signal=SIGKILL ftds-lfd@{victim}.service")
            return f"{host}: kill -9 ftds-lfd@{victim}"
        if name in ("kill_gfd", "kill_rm"):
            daemon = name.split("_")[1]
            lab.ssh(self.manager, f"systemctl kill --signal=SIGKILL ftds-{daemon}.service")
            return f"{self.manager}: kill -9 ftds-{daemon}"
        if name == "power_cut":
            lab.lab("crash", host)
            self._down.add(host)
            return f"power cut of {host}"
        if name == "host_stop":
            lab.lab("stop", host)
            self._down.add(host)
            return f"clean halt of {host}"
        if name in ("partition", "partition_backup"):
            lab.lab("partition", host)
            self._partitioned = True
            return f"{host} cut from every other host"
        if name == "partition_from_rm":
            lab.lab("partition", host, "--from", self.manager)
            self._partitioned = True
            return f"{host} cut from {self.manager} (GFD/RM) only"
        if name == "partition_from_primary":
            primary_host = lab.replica_hosts[primary]
            lab.lab("partition", host, "--from", primary_host)
            self._partitioned = True
            return f"{host} cut from the primary's host {primary_host} only"
        raise ValueError(f"unknown fault {name}")

    def recover(self, kind: Kind, victim: str) -> None:
        self.heal_all()

    def heal_all(self) -> None:
        if self._partitioned:
            self.lab.lab("heal")
            self._partitioned = False
        for victim in list(self._paused):
            self.lab.ssh(self.lab.replica_hosts[victim],
                         f"systemctl kill --signal=SIGCONT ftds-replica@{victim}.service",
                         check=False)
            self._paused.discard(victim)
        for host in list(self._down):
            self.lab.lab("start", host)
            self._down.discard(host)


# ======================================================================== schedules ====
@dataclass
class Schedule:
    steps: list[str]  # fault kind names, in order
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @staticmethod
    def named(name: str, target: Target, faults: int, seed: int) -> Schedule:
        return Schedule.for_kinds(name, target.kinds, target.name, faults, seed)

    @staticmethod
    def check_name(name: str, target: str) -> None:
        """Raise ValueError (naming the choices) unless ``name`` is a schedule of ``target``
        (local or lab): called before anything is started."""
        Schedule.for_kinds(name, LOCAL_KINDS if target == "local" else LAB_KINDS, target, 1, 0)

    @staticmethod
    def for_kinds(name: str, kinds: dict[str, Kind], target: str, faults: int,
                  seed: int) -> Schedule:
        rng = random.Random(seed)
        if name == "milestone5":
            return Schedule(["kill_primary", "kill", "kill_primary"], seed, rng)
        if name in ("kills", "pauses"):
            step = "kill_primary" if name == "kills" else "pause"
            return Schedule([step] * max(faults, 1), seed, rng)
        if name == "random":
            choices = list(kinds.values())
            weights = [k.weight for k in choices]
            steps = [rng.choices(choices, weights)[0].name for _ in range(faults)]
            return Schedule(steps, seed, rng)
        if name == "all":
            # every kind in turn, as many rounds as needed
            names = list(kinds)
            return Schedule([names[i % len(names)] for i in range(faults)], seed, rng)
        # Fault kinds by name (``fault_during_recovery``, ``kill,pause``): in turn.
        names = [n.strip() for n in name.split(",") if n.strip()]
        if names and all(n in kinds for n in names):
            return Schedule([names[i % len(names)] for i in range(max(faults, 1))], seed, rng)
        raise ValueError(f"unknown schedule {name!r} (milestone5, kills, pauses, random, all, "
                         f"or fault kinds of the {target} target, comma-separated: "
                         f"{', '.join(kinds)})")

    def pick_victim(self, kind: Kind, status: dict[str, Any]) -> tuple[str, str]:
        primary = status["primary"]
        replicas = sorted(status["replicas"])
        backups = [r for r in replicas if r != primary]
        if kind.victim == "primary" or (kind.victim == "any" and self.rng.random() < 0.4):
            return primary, "primary"
        if kind.victim == "manager":
            return "RM/GFD", "manager"
        return self.rng.choice(backups), "backup"

    def hold(self, kind: Kind) -> float:
        low, high = kind.hold
        return self.rng.uniform(low, high) if high else 0.0



# ================================================================= compound faults ====
StatusTest = Callable[[dict[str, Any]], Any]


async def _rm_status(config: ClusterConfig, key: bytes) -> dict[str, Any] | None:
    try:
        return await rm_request(config, key, "status_req", timeout=1.0)
    except (OSError, TimeoutError, ConnectionError):
        return None


async def wait_status(config: ClusterConfig, key: bytes, test: StatusTest,
                      timeout: float) -> dict[str, Any] | None:
    """The RM's first status that passes ``test``, or None after ``timeout`` seconds."""
    async def probe() -> dict[str, Any] | None:
        status = await _rm_status(config, key)
        return status if status is not None and test(status) else None
    try:
        return await ctl.wait_for(probe, timeout, 0.01)
    except TimeoutError:
        return None


async def run_compound(target: Target, kind: Kind, status: dict[str, Any],
                       config: ClusterConfig, key: bytes, rng: random.Random, hold: float,
                       event: FaultEvent) -> None:
    """Run one compound fault from a healthy ``status``; fills ``event`` (note, extra)."""
    if kind.name == "fault_during_recovery":
        await _fault_during_recovery(target, status, config, key, rng, event)
    elif kind.name == "primary_crash_backups_out":
        await _primary_crash_backups_out(target, status, config, key, hold, event)
    else:
        raise ValueError(f"{kind.name} is not a compound fault")


async def _fault_during_recovery(target: Target, status: dict[str, Any], config: ClusterConfig,
                                 key: bytes, rng: random.Random, event: FaultEvent) -> None:
    first, epoch = status["primary"], status["epoch"]
    notes = [target.kill_replica(first)]
    # Strike again right after the RM announced the new primary (its view change may still
    # run), or once the relaunched replica is back but still catching up.
    stage = rng.choice(["new primary announced", "relaunched replica catching up"])
    announced = await wait_status(
        config, key, lambda s: s["epoch"] > epoch and s["primary"] not in (None, first), 5.0)
    if announced is None:
        event.note = f"{notes[0]}; no new primary within 5s: second fault not injected"
        return
    now = announced
    if stage.startswith("relaunched"):
        catching_up = await wait_status(
            config, key, lambda s: first in s["membership"] and not s["replicas"][first]["ready"]
            and s["primary"] not in (None, first), 3.0)
        if catching_up is None:
            stage = "new primary announced (the relaunched replica was never seen catching up)"
        else:
            now = catching_up
    new = now["primary"]
    others = [m for m in now["members"] if m != new]
    if others and rng.random() < 0.5:
        second, role = new, "new primary"
    elif others:
        second, role = rng.choice(others), "backup"
    else:
        # The new primary is alone in its ready set: killing it would lose the only holder.
        second, role = rng.choice([r for r in sorted(now["replicas"]) if r not in (new, first)]
                                  or [first]), "replica outside the ready set"
    notes.append(target.kill_replica(second))
    event.extra.update(second_victim=second, second_role=role, stage=stage,
                       first_epoch=epoch, epoch_at_second=now["epoch"],
                       gap_s=round(time.time() - event.injected, 3))
    event.note = (f"{notes[0]}; {stage} ({new} primary of epoch {now['epoch']}): "
                  f"{notes[1]} ({role}) {event.extra['gap_s'] * 1000:.0f} ms after the first")


async def _primary_crash_backups_out(target: Target, status: dict[str, Any],
                                     config: ClusterConfig, key: bytes, hold: float,
                                     event: FaultEvent) -> None:
    primary, epoch = status["primary"], status["epoch"]
    backups = [r for r in sorted(status["replicas"]) if r != primary]
    notes: list[str] = []
    stopped_at = time.monotonic()
    dropped_at = killed_at = 0.0
    try:
        notes.extend(target.pause_replica(b) for b in backups)
        dropped = await wait_status(
            config, key, lambda s: s["epoch"] == epoch and s["members"] == [primary], 4.0)
        if dropped is None:
            event.note = ("; ".join(notes) + "; the RM did not drop the backups within 4s: "
                          "the primary was not killed; the backups were resumed")
            return
        dropped_at = time.monotonic()
        await asyncio.sleep(hold)  # the primary acknowledges alone, under its lease
        killed_at = time.monotonic()
        notes.append(target.kill_replica(primary))
    finally:
        notes.extend(target.resume_replica(b) for b in backups)
    event.extra.update(stopped_at=stopped_at, dropped_at=dropped_at, killed_at=killed_at,
                       alone_s=round(killed_at - dropped_at, 3))
    # Nobody holds every acknowledged write now: the RM must wait, not promote.
    verdict = await wait_status(
        config, key, lambda s: s.get("unavailable") or (s["epoch"] > epoch and s["primary"]),
        5.0)
    if verdict is None or not verdict.get("unavailable"):
        promoted = verdict["primary"] if verdict else None
        event.extra["rm_outcome"] = f"promoted {promoted}" if promoted else "no answer in 5s"
        event.note = "; ".join(notes) + (
            f"; UNEXPECTED: the RM promoted {promoted} although no replica held every "
            "acknowledged write" if promoted else "; the RM said neither unavailable nor who")
        return
    event.extra["rm_outcome"] = "unavailable"
    event.extra["rm_unavailable"] = verdict["unavailable"]
    # Heal it as an operator would: the backup holding the most, forced with data loss.
    await asyncio.sleep(0.2)  # the resumed backups drain what reached them before the kill
    seqs = await ctl.statuses(config, key, timeout=1.0)
    forced = max(backups, key=lambda b: ((seqs.get(b) or {}).get("seq") or -1, -int(b[1:])))
    reply: dict[str, Any] | None = None
    deadline = time.monotonic() + 5.0
    while reply is None:
        try:
            reply = await rm_request(config, key, "force_primary",
                                     {"replica": forced, "accept_data_loss": True})
        except (RMRefused, OSError, TimeoutError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                event.note = ("; ".join(notes) + "; RM unavailable (expected); force_primary "
                              f"{forced} failed: {exc}")
                event.extra["force_error"] = str(exc)
                return
            await asyncio.sleep(0.1)  # not present yet: its LFD has not seen it resume
    event.extra["override"] = {
        "kind": "force_primary", "old_primary": primary, "old_epoch": epoch,
        "forced": forced, "forced_epoch": reply.get("epoch"),
        "forced_seq": (seqs.get(forced) or {}).get("seq"),
        "stopped_at": stopped_at, "killed_at": killed_at, "message": reply.get("message"),
    }
    event.note = "; ".join(notes) + (
        f"; RM unavailable as expected; operator override: force_primary {forced} "
        f"(epoch {reply.get('epoch')}, accept_data_loss)")
