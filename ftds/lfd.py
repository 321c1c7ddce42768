"""The Local Fault Detector: beside one replica, heartbeats it and tells the GFD what it sees.

- Heartbeats the replica on its control port every ``heartbeat_interval``; after
  ``heartbeat_misses`` unanswered heartbeats the replica is declared failed (a hang).
- When the connection drops the replica is declared failed at once; if its process is gone
  (checked in /proc) the report says so (``crashed``), which lets the RM fail over without
  waiting out a lease.
- With ``tunables.fence_hung_primary``, a hung primary (or sequencer) is killed before it is
  reported, and reported as a crash once its process is seen gone: its lease need not be waited
  out, so a hang fails over as fast as a crash. Off by default.
- Registers with the GFD, reports add/delete at once, answers the GFD's heartbeats and
  reconnects with a short backoff when the GFD is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import ConfigError, ReplicaSpec, describe_changes, load_config
from .procs import kill_process, pid_alive
from .sdnotify import nobody_listens
from .supervise import spawn
from .wire import Conn, Message, WireError, connect, require, stay_connected

log = logging.getLogger("ftds.lfd")

DEATH_CONFIRM_WINDOW = 0.05  # how long a closed socket may precede the process's exit
PID_MAX = 1 << 22  # Linux's limit: a welcome's pid beyond it (or below 1) is no process id
FENCE_CONFIRM_WINDOW = 1.0  # how long a SIGKILLed process may take to be gone (or a zombie)


class LocalFaultDetector:
    def __init__(self, config_path: str, replica_id: str) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.key = self.config.read_key()
        self.spec: ReplicaSpec = self.config.replica(replica_id)
        self.replica_id = replica_id
        self.name = self.spec.lfd_id
        self.tls = self.config.link_tls(self.name)
        self.heartbeat_count = 0  # the course's heartbeat_count
        self.status_changed: Callable[[], None] = nobody_listens  # the run loop sets it
        self.present = False
        self.replica_pid: int | None = None
        self.replica_state: dict[str, Any] = {}
        self.last_ack = 0.0
        self.down_since = time.time()
        self.last_change: dict[str, Any] = {}
        self._replica_conn: Conn | None = None
        self._gfd_conn: Conn | None = None
        self._outstanding: set[int] = set()
        self.stalled_seen = False  # the replica said its applier is stalled
        self._fencing = False  # killing a hung primary: the loss is reported once that is done
        self._tasks: list[asyncio.Task[None]] = []
        self._replica_lost = asyncio.Event()

    @property
    def tunables(self):
        return self.config.tunables

    def status_line(self) -> str:
        state = ""
        if self.present:
            r = self.replica_state
            state = f" ({r.get('role', '?')}, i_am_ready={r.get('i_am_ready', 0)})"
        gfd = "registered with the GFD" if self._gfd_conn else "GFD not connected"
        return f"{self.replica_id} {'present' if self.present else 'absent'}{state}, {gfd}"

    async def start(self) -> None:
        log.info("%s: watching %s at %s:%d every %.0f ms (%d misses)", self.name,
                 self.replica_id, self.spec.host, self.spec.control_port,
                 self.tunables.heartbeat_interval * 1000, self.tunables.heartbeat_misses)
        self._tasks = [spawn(self._replica_loop(), "replica"),
                       spawn(self._gfd_loop(), "gfd")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._replica_conn, self._gfd_conn):
            if conn is not None:
                conn.close()

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
            new.replica(self.replica_id)
        except ConfigError as exc:
            log.error("%s: reload refused, keeping the running configuration: %s", self.name, exc)
            return
        changes = describe_changes(self.config, new)
        self.config = new
        self.spec = new.replica(self.replica_id)
        log.info("%s: configuration reloaded: %s", self.name,
                 "; ".join(changes) if changes else "no change")
        self._send_gfd_state()

    # ====================================================================== replica ====
    async def _replica_loop(self) -> None:
        while True:
            tun = self.tunables
            try:
                conn = await connect(self.spec.host, self.spec.control_port, self.key,
                                     tun.max_frame, self.name, timeout=tun.connect_timeout,
                                     on_message=self._on_replica_message,
                                     on_close=self._on_replica_closed,
                                     label=f"{self.name}->{self.replica_id}",
                                     tls=self.tls, expect=f"replica {self.replica_id}")
            except (OSError, TimeoutError):
                await asyncio.sleep(tun.heartbeat_interval)
                continue
            self._replica_conn = conn
            self._replica_lost.clear()
            self._outstanding.clear()
            conn.send("hello", {"role": "lfd", "id": self.name})
            await self._heartbeat(conn)

    async def _heartbeat(self, conn: Conn) -> None:
        """Heartbeat until the replica is lost (misses or a closed connection)."""
        misses = 0
        while not conn.is_closing():
            tun = self.tunables
            if self._outstanding:
                misses += 1
                if misses >= tun.heartbeat_misses:
                    what = "applier stalled" if self.stalled_seen else "no heartbeat reply"
                    why = (f"{what} for {misses} intervals "
                           f"({misses * tun.heartbeat_interval * 1000:.0f} ms)")
                    fenced = await self._fence() if self._should_fence() else None
                    if fenced is not None:
                        why += f"; {fenced}"
                    self._declare_failed(why, confirmed=fenced is not None)
                    conn.abort()
                    return
            else:
                misses = 0
            self.heartbeat_count += 1
            n = self.heartbeat_count
            self._outstanding = {n}
            if self.config.trace.heartbeats:
                log.info("[%d] %s sending heartbeat to %s", n, self.name, self.replica_id,
                         extra={"kind": "heartbeat"})
            conn.send("hb", {"n": n})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replica_lost.wait(), tun.heartbeat_interval)
        # the connection closed: _on_replica_closed already reported it

    def _should_fence(self) -> bool:
        """Fence only a hung orderer, and only when asked: a backup's stall costs nothing to
        wait out, while killing it would cost a full catch-up."""
        return (self.tunables.fence_hung_primary and self.present
                and self.replica_pid is not None
                and self.replica_state.get("role") in ("primary", "sequencer"))

    async def _fence(self) -> str | None:
        """Kill the hung replica and see its process gone: then the RM may treat the loss as a
        crash and promote without waiting out its lease (a dead process acknowledges nothing).
        None if it could not be confirmed gone (the loss stays a hang: the lease is waited)."""
        pid = self.replica_pid
        assert pid is not None
        if not pid_alive(pid):
            return None  # gone on its own, or not ours to judge: no claim
        try:
            kill_process(pid)
        except PermissionError:
            log.error("%s: may not kill %s (process %d): not fenced; the RM waits out its "
                      "lease", self.name, self.replica_id, pid)
            return None
        self._fencing = True
        try:
            deadline = time.monotonic() + FENCE_CONFIRM_WINDOW
            while pid_alive(pid):
                if time.monotonic() > deadline:
                    log.error("%s: %s (process %d) still there %.0f ms after SIGKILL: not "
                              "fenced", self.name, self.replica_id, pid,
                              FENCE_CONFIRM_WINDOW * 1000)
                    return None
                await asyncio.sleep(0.002)
        finally:
            self._fencing = False
        log.warning("%s: fenced hung %s %s: killed process %d", self.name,
                    self.replica_state.get("role"), self.replica_id, pid,
                    extra={"kind": "membership"})
        return f"killed (fenced), process {pid} gone"

    def _on_replica_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "welcome":
            # The pid is signalled (a fence is SIGKILL): a process id, nothing else.
            pid = require(msg, "pid", int)
            if not 0 < pid <= PID_MAX:
                raise WireError("malformed", f"welcome: field 'pid' is no process id ({pid})")
            self.replica_pid = pid
            self.replica_state = msg
            return
        if kind == "hb_ack":
            n = require(msg, "n", int)
            if msg.get("stalled") is True:
                # The loop answers but the applier does not take its work: as good as a hang.
                if not self.stalled_seen:
                    log.warning("%s: %s answers heartbeats but its applier is stalled",
                                self.name, self.replica_id)
                self.stalled_seen = True
                return
            self.stalled_seen = False
            self._outstanding.discard(n)
            self.last_ack = time.time()
            self.replica_state = msg
            if self.config.trace.heartbeats:
                log.info("[%d] %s receives heartbeat from %s", n, self.name, self.replica_id,
                         extra={"kind": "heartbeat"})
            if not self.present:
                self.present = True
                log.info("%s: add replica %s", self.name, self.replica_id,
                         extra={"kind": "membership"})
                self._report("add", "heartbeat answered", confirmed=False)
            self.status_changed()  # its role or readiness may have changed (sent if so)
            return
        if kind == "error":
            log.error("%s: %s refused us: %s", self.name, self.replica_id, msg.get("message"))
            return
        raise WireError("unknown_type", f"{kind!r} from a replica")

    def _on_replica_closed(self, conn: Conn) -> None:
        if conn is not self._replica_conn:
            return
        self._replica_conn = None
        self._replica_lost.set()
        if not self.present or self._fencing:
            return  # a fence in progress reports the loss itself
        pid = self.replica_pid
        asyncio.get_running_loop().create_task(self._classify_loss(pid))

    async def _classify_loss(self, pid: int | None) -> None:
        """A closed connection: is the process gone (a crash) or only the connection?"""
        deadline = time.monotonic() + DEATH_CONFIRM_WINDOW
        dead = pid is not None and not pid_alive(pid)
        while not dead and pid is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            dead = not pid_alive(pid)
        if dead:
            self._declare_failed(f"process {pid} exited (connection closed)", confirmed=True)
        else:
            self._declare_failed("connection closed", confirmed=False)

    def _declare_failed(self, why: str, *, confirmed: bool) -> None:
        if not self.present:
            return
        self.present = False
        self.down_since = time.time()
        log.warning("%s: delete replica %s (%s)", self.name, self.replica_id, why,
                    extra={"kind": "membership"})
        self._report("delete", why, confirmed=confirmed)
        self.status_changed()

    # ========================================================================== GFD ====
    def _report(self, kind: str, why: str, *, confirmed: bool) -> None:
        self.last_change = {"kind": kind, "reason": why, "confirmed_dead": confirmed,
                            "at": time.time(), "pid": self.replica_pid}
        if self._gfd_conn is not None:
            self._gfd_conn.send(kind, {"replica": self.replica_id, **self.last_change})

    def _state(self) -> dict[str, Any]:
        return {"id": self.name, "replica": self.replica_id, "present": self.present,
                "pid": self.replica_pid, "heartbeat_count": self.heartbeat_count,
                "heartbeat_interval": self.tunables.heartbeat_interval,
                "heartbeat_misses": self.tunables.heartbeat_misses,
                "heartbeat_age": round(time.time() - self.last_ack, 3) if self.last_ack else None,
                "lfd_pid": os.getpid(), "last_change": self.last_change}

    def _send_gfd_state(self) -> None:
        if self._gfd_conn is not None:
            self._gfd_conn.send("state", self._state())

    async def _gfd_loop(self) -> None:
        def dial() -> Awaitable[Conn]:
            tun = self.tunables
            gfd = self.config.gfd
            return connect(gfd.host, gfd.port, self.key, tun.max_frame, self.name,
                           timeout=tun.connect_timeout, on_message=self._on_gfd_message,
                           label=f"{self.name}->GFD", tls=self.tls, expect="gfd GFD")

        async def registered(conn: Conn) -> None:
            self._gfd_conn = conn
            conn.send("hello", {"role": "lfd", **self._state()})
            log.info("%s: registered with the GFD", self.name, extra={"kind": "membership"})
            await conn.closed
            self._gfd_conn = None
            log.warning("%s: lost the GFD; reconnecting", self.name)

        def unreachable(exc: BaseException) -> None:
            gfd = self.config.gfd
            log.warning("%s: GFD at %s:%d unreachable (%s); retrying", self.name, gfd.host,
                        gfd.port, exc.__class__.__name__)

        await stay_connected(dial, registered, first=0.05, on_unreachable=unreachable)

    def _on_gfd_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "hb":
            n = require(msg, "n", int)
            conn.send("hb_ack", {"n": n, **self._state()})
        elif kind in ("welcome", "ok"):
            return
        elif kind == "error":
            log.error("%s: the GFD refused us: %s", self.name, msg.get("message"))
        else:
            raise WireError("unknown_type", f"{kind!r} from the GFD")
