"""The systems under test, N nodes each on 127.0.0.1 (3 by default): start, check stable, stop.

- ftds (passive or active): the embedded cluster (N replicas, their LFDs, GFD, RM under the
  local supervisor), default tunables, request tracing off.
- Redis: Debian's ``redis-server``, a master and N-1 replicas, in memory (no RDB snapshots, no
  AOF: ftds and PySyncObj keep their state in memory too); with ``sentinel=True`` also N
  Sentinels (quorum: a majority of them) for the failover trials.
- PySyncObj: ``bench.pysyncobj_node``, N nodes, with append batching on (its default) or off.

Every system is loaded only once it is *stable*: the same leader seen for ``HOLD`` seconds in a
row (ftds: ``ftds status`` healthy with the same primary and epoch; Redis: every replica reports
``master_link_status:up``; PySyncObj: every node names the same leader in the same term).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from ftds import local

from . import resp

REPO = Path(__file__).resolve().parent.parent
HOLD = 0.5  # seconds a leader must stay the same before load starts
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000
PYSYNCOBJ_TIMEOUTS = (0.4, 1.4)  # raftMinTimeout, raftMaxTimeout (PySyncObj's defaults)


class NotStable(RuntimeError):
    """A system whose leader did not settle in time."""


async def settle(probe: Callable[[], Awaitable[Hashable | None]], timeout: float = 30.0,
                 hold: float = HOLD) -> Hashable:
    """Poll ``probe`` until it returns the same non-None state for ``hold`` seconds."""
    deadline = time.monotonic() + timeout
    state: Hashable | None = None
    since = 0.0
    last: object = None
    while time.monotonic() < deadline:
        try:
            now_state = await probe()
        except Exception as exc:  # a node not up yet, a refused connection: keep polling
            now_state, last = None, exc
        now = time.monotonic()
        if now_state is None or now_state != state:
            state, since = now_state, now
        elif now - since >= hold:
            return state
        await asyncio.sleep(0.05)
    raise NotStable(f"no stable leader within {timeout:g}s (last seen: {state or last})")


def free_ports(count: int, start: int) -> list[int]:
    for base in range(start, 60000, count + 7):
        ports = list(range(base, base + count))
        if local.ports_free("127.0.0.1", ports):
            return ports
    raise RuntimeError("no free ports on 127.0.0.1")


def child_env() -> dict[str, str]:
    # The bench package lives in the checkout, not in the installed ftds.
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
            "PYTHONUNBUFFERED": "1"}


def end_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    local.end_processes(procs, resume=True)  # a hang trial may have left one stopped


class System:
    """One system under test; ``with system:`` starts it and always stops it."""

    name = ""
    kind = ""  # the driver's --system

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def leader(self) -> Hashable | None:
        """The leader as every node sees it (None while they disagree or it is not ready)."""
        raise NotImplementedError

    def wait_stable(self, timeout: float = 30.0) -> Hashable:
        return asyncio.run(settle(self.leader, timeout))

    def server_pids(self) -> dict[str, int]:
        """Every server process, labelled ``role:name``: ``replica`` for the nodes that hold
        the data, ``control`` (ftds's LFDs, GFD, RM) or ``sentinel`` for the rest."""
        raise NotImplementedError

    def driver_args(self, leader: Hashable) -> list[str]:
        """How the driver reaches ``leader`` (what ``wait_stable`` returned)."""
        raise NotImplementedError

    def leader_pid(self, leader: Hashable) -> int:
        raise NotImplementedError

    def __enter__(self) -> System:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ftds(System):
    kind = "ftds"

    def __init__(self, mode: str, workdir: Path, replicas: int = 3, fenced: bool = False) -> None:
        self.mode = mode
        self.name = f"ftds {mode}" + (" fenced" if fenced else "")
        self.dir = workdir / f"ftds-{mode}-{time.monotonic_ns()}"
        tunables = {"fence_hung_primary": True} if fenced else None
        self.path = local.write_cluster(self.dir, replicas, mode, trace={"requests": False},
                                        tunables=tunables)
        from ftds.config import load_config
        self.config = load_config(self.path)
        self.key = self.config.read_key()

    def start(self) -> None:
        local.spawn(self.dir, "supervisor", ["local", "supervise", "--dir", str(self.dir)])

    def stop(self) -> None:
        for rid in self.config.replica_ids:  # a hang trial may have left one stopped
            pid = local.read_pid(self.dir, rid)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        local.stop_cluster(self.dir)

    async def status(self) -> dict[str, Any]:
        from ftds.rmclient import rm_request
        return await rm_request(self.config, self.key, "status_req", timeout=1.0)

    async def leader(self) -> Hashable | None:
        from ftds.status import OK, health
        s = await self.status()
        if health(s)[0] != OK or s.get("failover_pending"):
            return None
        return (s["primary"], s.get("epoch"))

    def server_pids(self) -> dict[str, int]:
        names = {r: "replica" for r in self.config.replica_ids}
        names.update({f"LFD{r[1:]}": "control" for r in self.config.replica_ids})
        names.update({"GFD": "control", "RM": "control"})
        pids = {f"{role}:{n}": local.read_pid(self.dir, n) for n, role in names.items()}
        return {n: p for n, p in pids.items() if p is not None}

    def driver_args(self, leader: Hashable) -> list[str]:
        return ["--config", str(self.path)]

    def leader_pid(self, leader: Hashable) -> int:
        pid = local.read_pid(self.dir, leader[0])  # type: ignore[index]
        if pid is None:
            raise RuntimeError(f"no pid for {leader}")
        return pid


def ensure_redis() -> str:
    """The redis-server binary; installs Debian's package when missing and running as root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server is missing: installing Debian's redis-server package", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"could not install redis-server with apt-get:\n"
                                 f"{done.stderr[-800:]}")
        if shutil.which("systemctl"):
            # The package starts a system Redis on 6379; the bench only needs the binary.
            subprocess.run(["systemctl", "disable", "--now", "redis-server.service"],
                           capture_output=True)
            print("stopped and disabled the redis-server service the package started",
                  flush=True)
        found = shutil.which("redis-server")
        if found:
            return found
    raise SystemExit("redis-server is not installed: install Debian's redis-server package "
                     "(sudo apt-get install redis-server), or run this benchmark as root to "
                     "have it installed; --systems without redis skips the Redis rows")


def redis_name(nodes: int) -> str:
    """The throughput row of Redis with ``nodes`` nodes: every write waits for all replicas."""
    return f"Redis WAIT {nodes - 1}"


class Redis(System):
    """A master and ``nodes - 1`` replicas; ``wait`` is the WAIT numreplicas the driver uses
    (all of them by default). With ``sentinel``, ``nodes`` Sentinels, quorum a majority."""

    kind = "redis"
    MASTER = "mymaster"

    def __init__(self, workdir: Path, sentinel: bool = False, wait: int | None = None,
                 nodes: int = 3) -> None:
        self.name = redis_name(nodes) if not sentinel else "Redis+Sentinel"
        self.binary = ensure_redis()
        self.sentinel = sentinel
        self.wait = nodes - 1 if wait is None else wait
        self.quorum = nodes // 2 + 1
        self.dir = workdir / f"redis-{time.monotonic_ns()}"
        ports = free_ports(2 * nodes if sentinel else nodes, 16400)
        self.ports = ports[:nodes]
        self.sentinel_ports = ports[nodes:] if sentinel else []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def server_conf(self, i: int) -> str:
        conf = (f"port {self.ports[i]}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir / f'r{i}'}\n"
                # In memory, like the others: no snapshots, no append-only file.
                'save ""\nappendonly no\n'
                # Replicas sync at once over the socket (the default waits 5 s).
                "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n")
        if i:
            conf += f"replicaof 127.0.0.1 {self.ports[0]}\n"
        return conf

    def sentinel_conf(self, i: int) -> str:
        ids = [f"{j + 1:040x}" for j in range(len(self.sentinel_ports))]
        return (f"port {self.sentinel_ports[i]}\nbind 127.0.0.1\ndaemonize no\n"
                f"dir {self.dir / f's{i}'}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.ports[0]} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.MASTER} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                # The replicas left after a failover resync at once, not one after another
                # (with 3 nodes there is one).
                f"sentinel parallel-syncs {self.MASTER} {max(1, len(self.ports) - 2)}\n"
                # Seeded with what they would discover by themselves in ~10 s (INFO every
                # 10 s, hellos every 2 s), so a trial's set-up stays short.
                f"sentinel myid {ids[i]}\n"
                + "".join(f"sentinel known-replica {self.MASTER} 127.0.0.1 {p}\n"
                          for p in self.ports[1:])
                + "".join(f"sentinel known-sentinel {self.MASTER} 127.0.0.1 {p} {ids[j]}\n"
                          for j, p in enumerate(self.sentinel_ports) if j != i))

    def _spawn(self, name: str, conf: str, extra: list[str]) -> None:
        node = self.dir / name
        node.mkdir(parents=True, exist_ok=True)
        (node / "redis.conf").write_text(conf)
        with open(node / "out.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [self.binary, str(node / "redis.conf"), *extra], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=node, start_new_session=True)

    def start(self) -> None:
        for i in range(len(self.ports)):
            self._spawn(f"r{i}", self.server_conf(i), [])
        for i in range(len(self.sentinel_ports)):
            self._spawn(f"s{i}", self.sentinel_conf(i), ["--sentinel"])

    def stop(self) -> None:
        end_processes(list(self.procs.values()))

    async def _ask(self, port: int, *command: str) -> resp.Value:
        conn = await resp.open_conn("127.0.0.1", port)
        try:
            async with asyncio.timeout(1.0):
                return await conn.call(*command)
        finally:
            conn.abort(ConnectionResetError("done"))

    async def master_port(self) -> int | None:
        """The master every node (and every Sentinel) agrees on, with every replica linked."""
        roles = {port: resp.info_fields(await self._ask(port, "INFO", "replication"))
                 for i, port in enumerate(self.ports) if self.procs[f"r{i}"].poll() is None}
        masters = [p for p, f in roles.items() if f.get("role") == "master"]
        if len(masters) != 1:
            return None
        master = masters[0]
        replicas = [f for f in roles.values() if f.get("role") == "slave"]
        if len(replicas) != len(self.ports) - 1 or any(f.get("master_link_status") != "up"
                                     or int(f.get("master_port", 0)) != master
                                     for f in replicas):
            return None
        for port in self.sentinel_ports:
            info = await self._ask(port, "SENTINEL", "master", self.MASTER)
            fields = dict(zip(*[iter(resp.text(v) for v in info)] * 2, strict=False)) \
                if isinstance(info, list) else {}
            if int(fields.get("port", 0)) != master or \
                    fields.get("num-slaves") != str(len(self.ports) - 1) or \
                    fields.get("num-other-sentinels") != str(len(self.sentinel_ports) - 1):
                return None
        return master

    async def leader(self) -> Hashable | None:
        return await self.master_port()

    def server_pids(self) -> dict[str, int]:
        return {f"{'replica' if n.startswith('r') else 'sentinel'}:{n}": p.pid
                for n, p in self.procs.items() if p.poll() is None}

    def driver_args(self, leader: Hashable) -> list[str]:
        return ["--port", str(leader), "--wait", str(self.wait)]

    def leader_pid(self, leader: Hashable) -> int:
        return self.procs[f"r{self.ports.index(leader)}"].pid  # type: ignore[arg-type]


class PySyncObj(System):
    kind = "pysyncobj"

    def __init__(self, workdir: Path, batch: bool, nodes: int = 3) -> None:
        self.batch = batch
        self.name = "PySyncObj defaults" if batch else "PySyncObj batch off"
        self.dir = workdir / f"pysyncobj-{time.monotonic_ns()}"
        ports = free_ports(2 * nodes, 17400)
        self.raft = [f"127.0.0.1:{p}" for p in ports[:nodes]]
        self.front = ports[nodes:]
        self.procs: list[subprocess.Popen[bytes]] = []

    def node_command(self, i: int) -> list[str]:
        partners = [a for j, a in enumerate(self.raft) if j != i]
        return [sys.executable, "-m", "bench.pysyncobj_node", "--raft", self.raft[i],
                "--port", str(self.front[i]), "--partners", *partners,
                "--batch" if self.batch else "--no-batch"]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.raft)):
            with open(self.dir / f"node{i}.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    self.node_command(i), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=self.dir, env=child_env(),
                    start_new_session=True))

    def stop(self) -> None:
        end_processes(self.procs)

    async def views(self) -> list[tuple[str, str | None, int]]:
        seen = []
        for i, port in enumerate(self.front):
            if self.procs[i].poll() is not None:
                continue
            conn = await resp.open_conn("127.0.0.1", port)
            try:
                async with asyncio.timeout(1.0):
                    reply = await conn.call("LEADER")
            finally:
                conn.abort(ConnectionResetError("done"))
            if not isinstance(reply, list) or len(reply) != 3:
                raise RuntimeError(f"LEADER answered {reply!r}")
            me, leader, term = reply
            seen.append((resp.text(me), resp.text(leader) or None, int(term)))  # type: ignore
        return seen

    async def leader(self) -> Hashable | None:
        seen = await self.views()
        found = {(leader, term) for _, leader, term in seen}
        if len(seen) != len(self.raft) or len(found) != 1:
            return None
        leader, term = found.pop()
        return (leader, term) if leader else None

    def server_pids(self) -> dict[str, int]:
        return {f"replica:node{i}": p.pid for i, p in enumerate(self.procs) if p.poll() is None}

    def front_of(self, raft_addr: str) -> int:
        return self.front[self.raft.index(raft_addr)]

    def driver_args(self, leader: Hashable) -> list[str]:
        return ["--port", str(self.front_of(leader[0]))]  # type: ignore[index]

    def leader_pid(self, leader: Hashable) -> int:
        return self.procs[self.raft.index(leader[0])].pid  # type: ignore[index]
