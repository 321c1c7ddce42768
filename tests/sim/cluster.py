"""A whole ftds cluster inside one simulated world: ftds's own daemons on simulated hosts.

Hosts: ``h1..hN`` run replica ``Sk`` and ``LFDk``; ``m`` runs the GFD and the RM (its record
on a real directory, so an RM restart reads what the last one wrote); ``c`` runs the clients.
The RM relaunches replicas through :class:`SimLauncher` (the part the real one does over SSH
with ``systemctl start``); the cluster plays systemd for the LFDs, the GFD and the RM.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ftds import supervise
from ftds.config import ReplicaSpec
from ftds.gfd import GlobalFaultDetector
from ftds.lfd import LocalFaultDetector
from ftds.replica.server import ReplicaDaemon
from ftds.rm.launcher import LaunchError
from ftds.rm.manager import ReplicationManager
from ftds.rm.store import RmStore

from .loop import NODE, Node, SimLoop
from .net import Network

MANAGER_HOST, CLIENT_HOST = "m", "c"
SSH_TIMEOUT = 2.0  # a relaunch to a host the RM cannot reach fails after this


def replica_host(rid: str) -> str:
    return f"h{rid[1:]}"


class Capture(logging.Handler):
    """Every log line of the world, by the process that wrote it."""

    def __init__(self, loop: SimLoop, workdir: str) -> None:
        super().__init__(logging.INFO)
        self.loop = loop
        # The run's scratch directory has a random name: lines show it as $SIMDIR, so that a
        # seed's lines (and its fingerprint) are the same in every replay.
        self.workdir = workdir
        self.lines: list[tuple[float, str, str]] = []  # (time, process, line)
        # Called with (process, line) for every line: faults that fire on an event.
        self.watchers: list[Callable[[str, str], None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        node = NODE.get()
        who = node.name if node else "sim"
        line = f"{record.levelname} {record.getMessage()}".replace(self.workdir, "$SIMDIR")
        self.lines.append((self.loop.time(), who, line))
        for watcher in list(self.watchers):
            watcher(who, line)

    def replica_logs(self, ids: list[str]) -> dict[str, str]:
        logs: dict[str, list[str]] = {rid: [] for rid in ids}
        for at, who, line in self.lines:
            if who in logs:
                logs[who].append(f"{at:.6f} {line}")
        return {rid: "\n".join(lines) for rid, lines in logs.items()}


class SimLauncher:
    """``ssh host sudo systemctl start ftds-replica@Sk``, simulated."""

    kind = "sim"

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        c = self.cluster
        host = replica_host(spec.id)
        if c.unreachable(MANAGER_HOST, host):
            await asyncio.sleep(SSH_TIMEOUT)
            raise LaunchError(f"ssh to {host}: timed out", unreachable=True)
        await asyncio.sleep(c.rng.uniform(0.05, 0.3))  # ssh, sudo, systemctl
        node = c.nodes.get(spec.id)
        if node is not None and node.alive:
            if not restart:
                return f"{spec.id} already running"
            c.kill(spec.id, "relaunch: restart")
        c.start_replica(spec.id)
        return f"started {spec.id}"


class SimCluster:
    def __init__(self, loop: SimLoop, rng: random.Random, workdir: Path, *, mode: str,
                 replicas: int = 3, tunables: dict[str, Any] | None = None) -> None:
        self.loop = loop
        self.rng = rng
        self.workdir = workdir
        self.ids = [f"S{k}" for k in range(1, replicas + 1)]
        addresses = {f"127.77.0.{k}": replica_host(f"S{k}") for k in range(1, replicas + 1)}
        addresses["127.77.0.100"] = MANAGER_HOST
        addresses["127.77.0.200"] = CLIENT_HOST
        self.net = Network(loop, rng, addresses)
        loop.network = self.net
        self.nodes: dict[str, Node] = {}
        self.pids = itertools.count(1000)
        self.events: list[tuple[float, str]] = []  # what the schedule did, for the trace
        self.exits: list[tuple[float, str, str]] = []  # fail-stop exits (a task died)
        self.down_hosts: set[str] = set()
        self.cuts: dict[tuple[str, str], int] = {}
        self.rm_disk_full = 0  # while > 0 the RM's record cannot be written (nested faults)
        self.config_path = self._write_config(mode, tunables or {})
        self.launcher = SimLauncher(self)

    # ====================================================================== set-up ====
    def _write_config(self, mode: str, tunables: dict[str, Any]) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "cluster.key"
        key.write_text(f"{self.rng.getrandbits(256):064x}\n")
        key.chmod(0o600)
        data = {
            "name": "sim", "mode": mode, "replication": "sync",
            "key_file": str(key),
            "replicas": [{"id": rid, "host": self.net.address_of(replica_host(rid)),
                          "port": 7001, "control_port": 7101} for rid in self.ids],
            "gfd": {"host": self.net.address_of(MANAGER_HOST), "port": 7200},
            "rm": {"host": self.net.address_of(MANAGER_HOST), "port": 7201,
                   "state_dir": str(self.workdir / "rm")},
            "launcher": {"kind": "none"},
            "tunables": {"restart_budget": 1000, **tunables},
            "trace": {"requests": False, "executions": True, "color": "never"},
        }
        self.config_data = data
        return self._save_config()

    def _save_config(self) -> str:
        path = self.workdir / "cluster.yml"
        path.write_text(yaml.safe_dump(self.config_data, sort_keys=False))
        return str(path)

    def rewrite_tunables(self, tunables: dict[str, Any]) -> None:
        """A deploy's new cluster file: daemons started from now on read it too."""
        self.config_data["tunables"] = {**self.config_data["tunables"], **tunables}
        self._save_config()

    def note(self, what: str) -> None:
        self.events.append((self.loop.time(), what))

    # =================================================================== processes ====
    def spawn(self, name: str, host: str, make: Callable[[], Any]) -> Node:
        node = Node(name, host, next(self.pids))
        self.nodes[name] = node

        async def boot() -> None:
            try:
                daemon = make()
                node.obj = daemon
                await daemon.start()
            except Exception as exc:  # a failed start: the process exits
                self.exits.append((self.loop.time(), name, f"start failed: {exc!r}"))
                self.kill(name, f"start failed: {exc}")

        self.loop.create_task(boot(), context=node.ctx)
        return node

    def start_replica(self, rid: str) -> Node:
        self.note(f"start {rid}")
        return self.spawn(rid, replica_host(rid), lambda: ReplicaDaemon(self.config_path, rid))

    def start_lfd(self, rid: str) -> Node:
        return self.spawn(f"LFD{rid[1:]}", replica_host(rid),
                          lambda: LocalFaultDetector(self.config_path, rid))

    def start_gfd(self) -> Node:
        return self.spawn("GFD", MANAGER_HOST, lambda: GlobalFaultDetector(self.config_path))

    def start_rm(self) -> Node:
        def make() -> ReplicationManager:
            rm = ReplicationManager(self.config_path)
            rm.relauncher.launcher = self.launcher
            return rm
        return self.spawn("RM", MANAGER_HOST, make)

    def start_all(self) -> None:
        self.start_gfd()
        self.start_rm()
        for rid in self.ids:
            self.start_replica(rid)
            self.start_lfd(rid)

    def alive(self, name: str) -> bool:
        node = self.nodes.get(name)
        return node is not None and node.alive

    # ====================================================================== faults ====
    def kill(self, name: str, why: str = "kill -9") -> None:
        node = self.nodes.get(name)
        if node is None or not node.alive:
            return
        self.note(f"{why}: {name}")
        node.alive = False
        node.held.clear()
        self.net.kill(node)

    def pause(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is not None and node.alive and not node.paused:
            self.note(f"SIGSTOP {name}")
            node.paused = True

    def resume(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is not None and node.paused:
            self.note(f"SIGCONT {name}")
            self.loop.resume(node)

    def reload(self, name: str) -> None:
        """SIGHUP: the daemon re-reads the cluster file (later, if its process is stopped)."""
        node = self.nodes.get(name)
        if node is None or not node.alive or node.obj is None:
            return
        self.note(f"SIGHUP {name}")
        self.loop.call_soon(node.obj.reload, context=node.ctx)

    def unreachable(self, a: str, b: str) -> bool:
        return a in self.down_hosts or b in self.down_hosts or \
            (a, b) in self.net.blocked or (b, a) in self.net.blocked

    def fail_stop(self, task_name: str, exc: BaseException) -> None:
        """supervise.on_fatal: the daemon whose task died exits (status 70)."""
        node = NODE.get()
        name = node.name if node else "?"
        if not self._disk_full_exit(name, exc):
            self.exits.append((self.loop.time(), name, f"task {task_name} died: {exc!r}"))
        if node is not None:
            self.kill(node.name, f"exit 70 (task {task_name} died)")

    def _disk_full_exit(self, name: str, exc: BaseException) -> bool:
        """The RM stopping because its full disk refused its record: what it must do (act on
        nothing it could not make durable), so not a failed run."""
        return name == "RM" and self.rm_disk_full > 0 and isinstance(exc, OSError) and \
            exc.errno == errno.ENOSPC

    def systemd_restart(self, name: str) -> None:
        """Restart=always for the LFDs, the GFD and the RM."""
        if self.alive(name):
            return
        self.note(f"systemd restarts {name}")
        if name == "GFD":
            self.start_gfd()
        elif name == "RM":
            self.start_rm()
        elif name.startswith("LFD"):
            self.start_lfd(f"S{name[3:]}")

    # ================================================================= partitions ====
    def cut(self, a: str, b: str, *, both: bool = True) -> None:
        """Traffic from host a to host b is lost until ``uncut`` (cuts nest: each counts)."""
        pairs = [(a, b), (b, a)] if both else [(a, b)]
        for pair in pairs:
            self.cuts[pair] = self.cuts.get(pair, 0) + 1
            self.net.blocked.add(pair)

    def uncut(self, a: str, b: str, *, both: bool = True) -> None:
        pairs = [(a, b), (b, a)] if both else [(a, b)]
        for pair in pairs:
            left = self.cuts.get(pair, 0) - 1
            if left <= 0:
                self.cuts.pop(pair, None)
                self.net.blocked.discard(pair)
            else:
                self.cuts[pair] = left
        self.net.flush()

    def heal_all(self) -> None:
        self.cuts.clear()
        self.net.blocked.clear()
        self.down_hosts.clear()
        self.net.flush()
        for name, node in list(self.nodes.items()):
            if node.paused:
                self.resume(name)

    @property
    def hosts(self) -> list[str]:
        return sorted(set(self.net.hosts.values()))

    def primary(self) -> str | None:
        """Who orders now: the RM's view, else the newest view a live replica holds."""
        rm = self.nodes.get("RM")
        if rm is not None and rm.alive and rm.obj is not None and rm.obj.view is not None:
            return rm.obj.view.primary
        best = None
        for rid in self.ids:
            node = self.nodes.get(rid)
            if node is None or not node.alive or node.obj is None:
                continue
            view = node.obj.replica.view
            if view is not None and (best is None or view.epoch > best.epoch):
                best = view
        return best.primary if best is not None else None


def install(cluster: SimCluster) -> Callable[[], None]:
    """Point ftds's process-wide hooks at the simulation; returns what undoes it."""
    saved = supervise.on_fatal
    supervise.on_fatal = cluster.fail_stop
    import ftds.lfd as lfd_module

    saved_alive = lfd_module.pid_alive

    def pid_alive(pid: int) -> bool:
        return any(n.pid == pid and n.alive for n in cluster.nodes.values())

    lfd_module.pid_alive = pid_alive
    saved_save = RmStore.save

    def save(store: RmStore, record: Any) -> None:
        if cluster.rm_disk_full:
            raise OSError(errno.ENOSPC, "No space left on device", str(store.path))
        saved_save(store, record)

    RmStore.save = save  # type: ignore[method-assign]

    def undo() -> None:
        supervise.on_fatal = saved
        lfd_module.pid_alive = saved_alive
        RmStore.save = saved_save  # type: ignore[method-assign]

    return undo
