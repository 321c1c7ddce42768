"""Seeded fault schedules: what goes wrong, when, for how long; faults overlap freely.

A schedule is plain data drawn from the seed, so a failing run prints it and the same seed
draws it again. Victims named "primary" are resolved when the fault fires (whoever orders
then), so a fault during a recovery hits the new primary, not the old one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# kind -> weight. Holds are drawn per kind in ``_draw``.
KINDS: dict[str, int] = {
    "kill": 4,                        # kill -9 a replica (the primary half the time)
    "pause": 3,                       # SIGSTOP a replica, often past its lease
    "isolate": 2,                     # a replica host cut from every other host
    "cut_oneway": 2,                  # one direction between two hosts
    "cut_pair": 2,                    # both directions between two hosts
    "kill_lfd": 1,
    "kill_gfd": 1,
    "kill_rm": 1,
    "pause_rm": 1,
    "rm_restart_with_replica_crash": 1,
    "gfd_restart_with_replica_crash": 1,
    "host_down": 1,                   # power cut: every process of a host, and the host
    "reset_links": 1,                 # a share of all connections reset at once
    "slow_net": 1,                    # delays up to tens of ms for a while
    "crash_during_recovery": 2,       # kill, then kill again while the cluster recovers
    "primary_crash_backups_out": 1,   # cut the primary from its backups, then kill it
    "kill_at_takeover": 2,            # kill the primary, then its successor as it takes over
}
# Drawn only when asked for (``--kinds default,reload``): adding them to KINDS would change
# every schedule the long runs and CI's digest were measured with.
OPT_IN: dict[str, int] = {
    "reload": 2,                      # new tunables in the cluster file, a rolling SIGHUP
    "rm_disk_full": 1,                # the RM's record cannot be written for a while
}


@dataclass
class Fault:
    at: float
    kind: str
    victim: str = ""       # a replica id, "primary", a host, or a daemon
    other: str = ""        # the second host of a cut
    hold: float = 0.0      # how long until it heals (pause, cut, restart delay)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"t+{self.at:.3f}s", self.kind]
        if self.victim:
            parts.append(self.victim)
        if self.other:
            parts.append(f"<-> {self.other}" if self.kind != "cut_oneway" else
                         f"-> {self.other}")
        if self.hold:
            parts.append(f"for {self.hold:.3f}s")
        parts.extend(f"{k}={v}" for k, v in self.extra.items())
        return " ".join(parts)


@dataclass
class Schedule:
    seed: int
    mode: str
    duration: float
    faults: list[Fault]
    link_ms: float = 0.0  # base latencies of the links are drawn up to this

    def describe(self) -> list[str]:
        return [f"seed {self.seed}: {self.mode} mode, {self.duration:g}s of load, links up to "
                f"{self.link_ms:g} ms, {len(self.faults)} faults"] + \
            ["  " + f.describe() for f in self.faults]


def draw(seed: int, *, replicas: int = 3, duration: float = 6.0, mode: str | None = None,
         kinds: list[str] | None = None, faults: tuple[int, int] = (2, 6)) -> Schedule:
    rng = random.Random(f"schedule-{seed}")
    chosen_mode = mode or rng.choice(["passive", "active"])
    names = kinds or list(KINDS)
    weights = [{**KINDS, **OPT_IN}[k] for k in names]
    link_ms = rng.choice([0.2, 1.0, 3.0, 10.0])
    count = rng.randint(*faults)
    out = [_draw(rng, rng.choices(names, weights)[0], replicas, duration) for _ in range(count)]
    out.sort(key=lambda f: f.at)
    return Schedule(seed, chosen_mode, duration, out, link_ms)


def _draw(rng: random.Random, kind: str, replicas: int, duration: float) -> Fault:
    ids = [f"S{k}" for k in range(1, replicas + 1)]
    hosts = [f"h{k}" for k in range(1, replicas + 1)]
    at = rng.uniform(0.3, max(0.5, duration - 0.5))

    def replica() -> str:
        return "primary" if rng.random() < 0.5 else rng.choice(ids)

    if kind == "kill":
        return Fault(at, kind, replica())
    if kind == "pause":
        return Fault(at, kind, replica(), hold=rng.uniform(0.1, 2.0))
    if kind == "isolate":
        return Fault(at, kind, rng.choice(["primary", *hosts]), hold=rng.uniform(0.2, 3.0))
    if kind in ("cut_oneway", "cut_pair"):
        a, b = rng.sample([*hosts, "m"], 2)
        if rng.random() < 0.4:
            a = "primary"
        return Fault(at, kind, a, b, hold=rng.uniform(0.2, 3.0))
    if kind == "kill_lfd":
        return Fault(at, kind, replica(), hold=rng.uniform(0.2, 1.5))
    if kind in ("kill_gfd", "kill_rm"):
        return Fault(at, kind, kind[5:].upper(), hold=rng.uniform(0.2, 2.0))
    if kind in ("pause_rm", "rm_disk_full"):
        return Fault(at, kind, "RM", hold=rng.uniform(0.2, 2.0))
    if kind in ("rm_restart_with_replica_crash", "gfd_restart_with_replica_crash"):
        return Fault(at, kind, replica(), hold=rng.uniform(0.2, 2.0))
    if kind == "host_down":
        return Fault(at, kind, rng.choice(["primary", *hosts]), hold=rng.uniform(0.3, 3.0))
    if kind == "reset_links":
        return Fault(at, kind, extra={"share": round(rng.uniform(0.1, 0.6), 2)})
    if kind == "slow_net":
        return Fault(at, kind, hold=rng.uniform(0.5, 3.0),
                     extra={"max_ms": round(rng.uniform(2, 40), 1)})
    if kind == "crash_during_recovery":
        after = rng.uniform(0.0005, 0.02) if rng.random() < 0.4 else rng.uniform(0.05, 1.0)
        return Fault(at, kind, replica(), extra={"second": rng.choice(["primary", *ids]),
                                                 "after": round(after, 4)})
    if kind == "kill_at_takeover":
        # Within a few ms of "I am the primary of epoch N": mid view change, or just after it
        # answered the requests held during it, before its backups acknowledged them.
        # Half the time one backup lags first: the primary's stream to it is cut one way for
        # a moment, so the successor holds entries that backup does not; the successor's
        # catch-up of it is then held on the link (heal_s after the kill) while it dies.
        extra: dict[str, Any] = {"delay_ms": round(rng.uniform(0.0, 8.0), 3)}
        if rng.random() < 0.5:
            extra["lag_s"] = round(rng.uniform(0.02, 0.4), 3)
            extra["heal_s"] = round(rng.uniform(0.0, 0.3), 3)
        return Fault(at, kind, "primary", extra=extra)
    if kind == "reload":
        # What a deploy changes on a running cluster (always a valid file: the deploy checks
        # it before it lands; a refused reload is tests/unit's).
        hb = rng.choice([0.05, 0.1, 0.2])
        tunables = {"heartbeat_interval": hb, "heartbeat_misses": rng.choice([2, 3, 5]),
                    "gfd_heartbeat_interval": rng.choice([0.05, 0.1, 0.2]),
                    "lease": round(rng.uniform(hb * 1.5, 1.0), 3),
                    "checkpoint_interval": rng.choice([0.2, 1.0, 3.0]),
                    "view_change_timeout": rng.choice([0.5, 1.0, 1.5]),
                    "request_timeout": rng.choice([0.5, 1.0, 2.0])}
        return Fault(at, kind, extra={"tunables": tunables, "order": rng.getrandbits(32),
                                      "gap": round(rng.uniform(0.0, 0.5), 3)})
    if kind == "primary_crash_backups_out":
        return Fault(at, kind, "primary", hold=rng.uniform(0.3, 1.5))
    raise ValueError(f"unknown fault kind {kind!r}")
