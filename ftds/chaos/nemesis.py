"""The nemesis: faults injected into a running cluster, and the schedules that order them.

Two targets: the embedded cluster (processes on this machine) and the lab (systemd hosts reached
over SSH, host faults through ``scripts/lab``). Each fault kind is a pair of actions (inject,
recover) plus how long the fault is held; kills need no recovery action, the RM brings the
replica back. Every injection is timed on the wall clock for the report and the timeline.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import local
from ..labenv import Lab


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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Kind:
    name: str
    victim: str  # primary | backup | any | manager
    hold: tuple[float, float] = (0.0, 0.0)  # seconds the fault lasts before recovery
    weight: float = 1.0


class Target(Protocol):
    name: str
    kinds: dict[str, Kind]

    def inject(self, kind: Kind, victim: str, primary: str) -> str: ...
    def recover(self, kind: Kind, victim: str) -> None: ...
    def heal_all(self) -> None: ...


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
}


class LocalTarget:
    name = "local"
    kinds = LOCAL_KINDS

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._paused: set[int] = set()

    def _pid(self, name: str) -> int:
        pid = local.read_pid(self.run_dir, name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    def inject(self, kind: Kind, victim: str, primary: str) -> str:
        name = kind.name
        if name in ("kill", "kill_primary"):
            os.kill(self._pid(victim), signal.SIGKILL)
            return f"kill -9 {victim}"
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
        raise ValueError(f"unknown fault {name}")

    def recover(self, kind: Kind, victim: str) -> None:
        if kind.name in ("pause", "pause_backup"):
            self.heal_all()

    def heal_all(self) -> None:
        for pid in list(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._paused.discard(pid)


# ======================================================================= lab target ====
LAB_KINDS = {
    **{k: v for k, v in LOCAL_KINDS.items() if k not in ("stop",)},
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

    def inject(self, kind: Kind, victim: str, primary: str) -> str:
        name = kind.name
        lab = self.lab
        host = lab.replica_hosts.get(victim, self.manager)
        unit = f"ftds-replica@{victim}.service"
        if name in ("kill", "kill_primary"):
            lab.ssh(host, f"systemctl kill --signal=SIGKILL {unit}")
            return f"{host}: systemctl kill -s KILL {unit}"
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
        rng = random.Random(seed)
        if name == "milestone5":
            return Schedule(["kill_primary", "kill", "kill_primary"], seed, rng)
        if name in ("kills", "pauses"):
            step = "kill_primary" if name == "kills" else "pause"
            return Schedule([step] * max(faults, 1), seed, rng)
        if name == "random":
            kinds = list(target.kinds.values())
            weights = [k.weight for k in kinds]
            steps = [rng.choices(kinds, weights)[0].name for _ in range(faults)]
            return Schedule(steps, seed, rng)
        if name == "all":
            # every kind in turn, as many rounds as needed
            names = list(target.kinds)
            return Schedule([names[i % len(names)] for i in range(faults)], seed, rng)
        raise ValueError(f"unknown schedule {name!r} (milestone5, kills, pauses, random, all)")

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

