"""One simulated run: a cluster, a workload with a hostile client, a fault schedule, the checks.

``run(seed)`` draws the schedule from the seed, runs it in a fresh simulated world and judges
the clients' histories and the replicas' execution traces with the same checker as ``ftds
chaos`` (linearizability, acknowledgements, executions, epochs, digests, hostile input,
counters). A run fails on any violation, when a daemon's task died (fail-stop is the safety
net, never the plan) or a callback raised, and when the healed cluster does not converge
without the RM saying why (it may rightly wait, "unavailable rather than lossy", when no
replica holding the acknowledged writes is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import random
import tempfile
import time as real_time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftds import ctl, wire
from ftds.client import Client
from ftds.config import load_config
from ftds.workload import run_workload
from ftds_tools.chaos.history import load
from ftds_tools.chaos.runner import judge

from .cluster import CLIENT_HOST, Capture, SimCluster, install, replica_host
from .loop import Node, SimLoop, ordered_hashes, virtual_world
from .schedule import Fault, Schedule, draw

# The simulated hosts' disks (state, epoch files, the RM's record) and the history: in memory
# where the machine has it. A real disk's fsyncs and renames block the worker with its core idle
# (a tenth of a run's wall time) and prove nothing here: a crash loses what the simulator says.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
SETTLE = 30.0  # virtual seconds the healed cluster gets to converge at the end
perf = real_time.perf_counter  # the real clock, for schedules/minute (time.* is virtual inside)


@dataclass
class Result:
    seed: int
    mode: str
    ok: bool
    why: str  # the first thing wrong, or "" when ok
    schedule: list[str]
    events: list[str] = field(default_factory=list)
    converged: bool = False
    unavailable: str = ""
    ops: int = 0
    acked: int = 0
    hostile: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    fingerprint: str = ""
    verdict: dict[str, Any] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)  # the last log lines before the end
    lines: list[str] = field(default_factory=list)  # every log line (``keep`` only)
    history: list[str] = field(default_factory=list)  # every operation (``keep`` only)

    def summary(self) -> str:
        state = "ok" if self.ok else f"FAIL: {self.why}"
        extra = "" if self.converged else \
            f", not converged ({self.unavailable or 'no reason given'})"
        return (f"seed {self.seed} {self.mode}: {state} ({self.acked}/{self.ops} ops "
                f"acknowledged, {self.virtual_s:.1f}s simulated in {self.wall_s:.2f}s{extra})")


class World:
    """The driver: applies the schedule to a cluster and reads the outcome."""

    def __init__(self, cluster: SimCluster, schedule: Schedule, capture: Capture) -> None:
        self.c = cluster
        self.capture = capture
        self.s = schedule
        self.loop = cluster.loop
        self.t0 = 0.0
        self.slow = 0

    # ===================================================================== faults ====
    def _replica(self, victim: str) -> str | None:
        return self.c.primary() if victim == "primary" else victim

    def _host(self, victim: str) -> str | None:
        if victim == "primary":
            rid = self.c.primary()
            return replica_host(rid) if rid else None
        return victim

    async def apply(self, f: Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at - self.loop.time()))
        c = self.c
        c.note(f"fault: {f.describe()}")
        k = f.kind
        if k == "kill":
            if rid := self._replica(f.victim):
                c.kill(rid)
        elif k == "pause":
            if rid := self._replica(f.victim):
                c.pause(rid)
                await asyncio.sleep(f.hold)
                c.resume(rid)
        elif k == "isolate":
            if host := self._host(f.victim):
                others = [h for h in c.hosts if h != host]
                for other in others:
                    c.cut(host, other)
                await asyncio.sleep(f.hold)
                for other in others:
                    c.uncut(host, other)
        elif k in ("cut_oneway", "cut_pair"):
            a, b = self._host(f.victim), f.other
            if a and a != b:
                both = k == "cut_pair"
                c.cut(a, b, both=both)
                await asyncio.sleep(f.hold)
                c.uncut(a, b, both=both)
        elif k == "kill_lfd":
            if rid := self._replica(f.victim):
                name = f"LFD{rid[1:]}"
                c.kill(name)
                await asyncio.sleep(f.hold)
                c.systemd_restart(name)
        elif k in ("kill_gfd", "kill_rm"):
            c.kill(f.victim)
            await asyncio.sleep(f.hold)
            c.systemd_restart(f.victim)
        elif k == "pause_rm":
            c.pause("RM")
            await asyncio.sleep(f.hold)
            c.resume("RM")
        elif k in ("rm_restart_with_replica_crash", "gfd_restart_with_replica_crash"):
            daemon = k[:3].upper()
            rid = self._replica(f.victim)
            c.kill(daemon)
            if rid:
                c.kill(rid)
            await asyncio.sleep(f.hold)
            c.systemd_restart(daemon)
        elif k == "host_down":
            if host := self._host(f.victim):
                for name, node in list(c.nodes.items()):
                    if node.host == host:
                        c.kill(name, "power cut")
                c.down_hosts.add(host)
                for other in c.hosts:
                    if other != host:
                        c.cut(host, other)
                await asyncio.sleep(f.hold)
                c.down_hosts.discard(host)
                for other in c.hosts:
                    if other != host:
                        c.uncut(host, other)
                c.note(f"{host} boots")
                c.systemd_restart(f"LFD{host[1:]}")  # enabled at boot; the replica is not
        elif k == "reset_links":
            c.note(f"reset {c.net.reset_some(f.extra['share'])} connections")
        elif k == "slow_net":
            self.slow += 1
            c.net.delay = (0.0001, f.extra["max_ms"] / 1000)
            await asyncio.sleep(f.hold)
            self.slow -= 1
            if not self.slow:
                c.net.delay = (0.0001, 0.0005)
        elif k == "crash_during_recovery":
            if rid := self._replica(f.victim):
                c.kill(rid)
            await asyncio.sleep(f.extra["after"])
            if rid := self._replica(f.extra["second"]):
                c.kill(rid, "kill -9 during recovery")
        elif k == "kill_at_takeover":
            rid = self._replica(f.victim)
            if rid is None:
                return
            armed = True
            lagging = None
            if "lag_s" in f.extra:
                lagging = self.rng_choice([b for b in c.ids if b != rid], f)

            def on_line(who: str, line: str) -> None:
                nonlocal armed
                if not armed:
                    return
                if lagging is not None and who != lagging and \
                        line.startswith(f"INFO {who}: {lagging} subscribed ("):
                    # The successor's catch-up of the lagging backup is held on the link for
                    # a while, as packets lost at that moment would be: a successor that
                    # answers before its backups hold the entries then loses them with its
                    # death. Cut before the catch-up is sent: this runs inside that log call.
                    src, dst = replica_host(who), replica_host(lagging)
                    c.cut(src, dst, both=False)
                    self.loop.call_later(f.extra["heal_s"], lambda: c.uncut(src, dst, both=False),
                                         context=contextvars.Context())
                elif "I am the primary of epoch" in line or "I am the sequencer of epoch" in line:
                    armed = False
                    self.capture.watchers.remove(on_line)
                    self.loop.call_later(f.extra["delay_ms"] / 1000, c.kill, who,
                                         "kill -9 at takeover", context=contextvars.Context())

            if lagging is not None:
                c.cut(replica_host(rid), replica_host(lagging), both=False)
                await asyncio.sleep(f.extra["lag_s"])
            self.capture.watchers.append(on_line)
            c.kill(rid, "kill -9 (successor will be killed as it takes over)")
            if lagging is not None:
                await asyncio.sleep(f.extra["heal_s"])
                c.uncut(replica_host(rid), replica_host(lagging), both=False)
        elif k == "primary_crash_backups_out":
            rid = c.primary()
            if rid is None:
                return
            host = replica_host(rid)
            backups = [replica_host(b) for b in c.ids if b != rid]
            for b in backups:
                c.cut(host, b)
            await asyncio.sleep(f.hold)
            c.kill(rid, "kill -9 (backups out)")
            await asyncio.sleep(0.3)
            for b in backups:
                c.uncut(host, b)
        elif k == "rm_disk_full":
            # The RM must stop rather than act on a decision it could not record; systemd
            # starts it again once its disk has room (restarted meanwhile, it stops again at
            # its first decision).
            c.rm_disk_full += 1
            c.note("the RM's disk is full")
            await asyncio.sleep(f.hold)
            c.rm_disk_full -= 1
            if not c.rm_disk_full:
                c.note("the RM's disk has room again")
                c.systemd_restart("RM")
        elif k == "reload":
            # A rolling reload, as a deploy's handlers run host by host: for a while some
            # daemons run the new tunables and others the old ones.
            c.rewrite_tunables(f.extra["tunables"])
            order = random.Random(f.extra["order"])
            names = sorted(c.nodes)
            order.shuffle(names)
            for name in names:
                c.reload(name)
                await asyncio.sleep(order.uniform(0.0, f.extra["gap"]))
        else:
            raise ValueError(f"unknown fault {k}")

    @staticmethod
    def rng_choice(options: list[str], f: Fault) -> str:
        """A choice drawn from the fault itself (its time), so it replays exactly."""
        return options[int(f.at * 1e6) % len(options)]

    # =============================================================== observation ====
    def healthy(self) -> bool:
        c = self.c
        rm = c.nodes.get("RM")
        if rm is None or not rm.alive or rm.obj is None or rm.obj.view is None:
            return False
        if rm.obj.unavailable or rm.obj.failover is not None:
            return False
        view = rm.obj.view
        seqs = set()
        for rid in c.ids:
            node = c.nodes.get(rid)
            if node is None or not node.alive or node.obj is None:
                return False
            replica = node.obj.replica
            # Ready by the RM's current view, not only by its own account: a deposed primary
            # that has not heard of the new epoch yet still calls itself ready.
            if not replica.ready or rid not in view.members or replica.epoch != view.epoch:
                return False
            seqs.add(replica.sm.seq)
        return len(seqs) == 1

    def unavailable(self) -> str:
        rm = self.c.nodes.get("RM")
        if rm is None or not rm.alive or rm.obj is None:
            return "the RM is down"
        return str(rm.obj.unavailable or "")

    async def until(self, predicate: Any, timeout: float, step: float = 0.05) -> bool:
        deadline = self.loop.time() + timeout
        while not predicate():
            if self.loop.time() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    async def in_process(self, node: Node, coro: Any) -> Any:
        """Run a coroutine as the named client process (its traffic comes from its host)."""
        return await self.loop.create_task(coro, context=node.ctx)

    # ==================================================================== scenario ====
    async def scenario(self, history: Path, rate: float) -> dict[str, Any]:
        c = self.c
        c.start_all()
        if not await self.until(self.healthy, 20.0):
            raise RuntimeError("the cluster never became healthy before any fault")
        config = load_config(c.config_path)
        key = config.read_key()
        clients = Node("C1", CLIENT_HOST, 900)
        self.t0 = self.loop.time()
        workload = self.loop.create_task(run_workload(
            config, key, name="C1", clients=3, rate=rate, duration=self.s.duration,
            keys=3, history=str(history), mix="rw", seed=self.s.seed, hostile=True),
            context=clients.ctx)
        faults = [asyncio.ensure_future(self.apply(f)) for f in self.s.faults]
        await asyncio.gather(*faults)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(workload), self.s.duration + 15)
        c.note("heal: every cut healed, every process resumed, systemd restarts daemons")
        c.heal_all()
        for name in ("GFD", "RM", *(f"LFD{rid[1:]}" for rid in c.ids)):
            c.systemd_restart(name)
        if not workload.done():
            await asyncio.wait({workload}, timeout=SETTLE)
        converged = await self.until(self.healthy, SETTLE, 0.1)
        c.note("converged" if converged else "NOT converged")
        reader = Node("reader", CLIENT_HOST, 901)
        statuses = await self.in_process(reader, ctl.statuses(config, key, timeout=1.0))
        ops = load([history])
        counters = sorted({o.key for o in ops if o.f == "incr" and not o.hostile})
        final: dict[str, Any] | None = None
        if converged:
            with contextlib.suppress(TimeoutError, OSError, ConnectionError):
                final = await asyncio.wait_for(
                    self.in_process(reader, _read(config, key, counters)), 10)
        return {"ops": ops, "statuses": statuses, "final": final, "converged": converged,
                "unavailable": "" if converged else self.unavailable(),
                "workload": workload.result() if workload.done() and
                not workload.cancelled() and workload.exception() is None else None}


async def _read(config: Any, key: bytes, keys: list[str]) -> dict[str, Any]:
    client = Client(config, key, "reader", trace=False)
    await client.start()
    try:
        await client.wait_connected(5, count=1)
        return {k: (await client.call({"op": "get", "key": k}))["res"]["value"] for k in keys}
    finally:
        await client.close()


def run(seed: int, *, mode: str | None = None, duration: float = 6.0, rate: float = 45.0,
        kinds: list[str] | None = None, replicas: int = 3, keep: bool = False) -> Result:
    schedule = draw(seed, replicas=replicas, duration=duration, mode=mode, kinds=kinds)
    started = perf()
    rng = random.Random(f"world-{seed}")
    random.seed(seed)  # the RM's relaunch jitter uses the module's generator
    loop = SimLoop()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    capture = None
    with tempfile.TemporaryDirectory(prefix="ftds-sim-", dir=SCRATCH) as tmp, \
            virtual_world(loop, rng.randbytes), ordered_hashes(wire.Conn):
        asyncio.set_event_loop(loop)
        cluster = SimCluster(loop, rng, Path(tmp), mode=schedule.mode, replicas=replicas)
        cluster.net.base_max = schedule.link_ms / 1000
        capture = Capture(loop, tmp)
        root.handlers[:] = [capture]
        root.setLevel(logging.INFO)
        undo = install(cluster)
        world = World(cluster, schedule, capture)
        try:
            outcome = loop.run_until_complete(world.scenario(Path(tmp) / "history.jsonl", rate))
        finally:
            undo()
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            asyncio.set_event_loop(None)
        logs = capture.replica_logs(cluster.ids)
        errors = list(loop.errors)
        virtual = loop.time()
        # The world ends like a power cut: no code of any process runs again (coroutines the
        # garbage collector closes later find a network that carries nothing).
        cluster.net.inert = True
        for node in cluster.nodes.values():
            node.alive = False
        loop._ready.clear()
        loop._timers.clear()
        loop.close()
    ops = outcome["ops"]
    verdict = judge(ops, logs, outcome["statuses"] if outcome["converged"] else None,
                    outcome["final"], final_expected=False)
    why = ""
    if not verdict["valid"]:
        first = verdict["first_violation"] or {}
        why = f"{first.get('check', '?')}: {first.get('text', '')}"
    elif cluster.exits:
        at, who, what = cluster.exits[0]
        why = f"fail-stop exit of {who} at t={at - 1000:.3f}: {what}"
    elif not outcome["converged"] and not outcome["unavailable"]:
        why = (f"stuck: {SETTLE:g}s after every fault healed the cluster has not converged "
               "and the RM gives no reason")
    elif errors:
        why = f"unhandled error in {errors[0]['node']}: {errors[0]['message']} " \
              f"{errors[0]['exception']}"
    digest = hashlib.sha256()
    for at, who, line in capture.lines:
        digest.update(f"{at:.9f} {who} {line}\n".encode())
    for op in ops:
        digest.update(op.describe().encode())
    return Result(
        seed=seed, mode=schedule.mode, ok=not why, why=why, schedule=schedule.describe(),
        events=[f"{at - 1000:9.3f}s  {what}" for at, what in cluster.events],
        converged=outcome["converged"], unavailable=outcome["unavailable"], ops=len(ops),
        acked=sum(1 for o in ops if o.outcome == "ok"),
        hostile=sum(1 for o in ops if o.hostile), virtual_s=virtual - 1000,
        wall_s=perf() - started, fingerprint=digest.hexdigest()[:16], verdict=verdict,
        tail=[f"{at - 1000:9.3f}s {who:7s} {line}" for at, who, line in capture.lines
              if not line.startswith("INFO EXEC")][-40:],
        lines=[f"{at - 1000:9.6f}s {who:7s} {line}" for at, who, line in capture.lines]
        if keep else [],
        history=[op.describe() for op in ops] if keep else [])
