"""The Global Fault Detector: the membership, from the LFDs' reports and its own heartbeats.

LFDs register here and report their replica's add/delete at once. The GFD heartbeats every LFD
every ``gfd_heartbeat_interval``; an LFD that misses ``gfd_heartbeat_misses`` of them (or whose
connection drops) is lost, and its replica is presumed lost with it. Every change bumps the view
number, is printed in the course's words (``GFD: 2 members: S1, S2``) and goes to the RM at once.

The GFD's state is soft: after a restart it rebuilds the membership from LFD re-registration.
Until every configured LFD has registered (or a few heartbeat periods passed) it says its view is
not yet *stable*, so the RM does not mistake a replica it has not heard of yet for a lost one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, describe_changes, load_config
from .gate import Gate
from .log import members_line
from .sdnotify import nobody_listens
from .supervise import spawn
from .wire import Conn, Message, WireError, connect, listen, optional, require, stay_connected

log = logging.getLogger("ftds.gfd")


@dataclass
class LfdLink:
    conn: Conn
    lfd: str
    replica: str
    present: bool
    state: dict[str, Any] = field(default_factory=dict)
    outstanding: int = 0  # heartbeats sent without an answer
    last_ack: float = field(default_factory=time.time)


class GlobalFaultDetector:
    name = "GFD"

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.key = self.config.read_key()
        self.tls = self.config.link_tls("GFD")
        self.lfds: dict[str, LfdLink] = {}  # by replica id
        self.membership: list[str] = []
        self.view = 0
        self.changes: list[dict[str, Any]] = []  # recent add/delete events, newest last
        self.started = time.monotonic()
        self.stable = False
        self.status_changed: Callable[[], None] = nobody_listens  # the run loop sets it
        self._server: asyncio.base_events.Server | None = None
        self._rm_conn: Conn | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._hb_count = 0
        gfd = self.config.gfd
        self.gate = Gate(f"GFD port {gfd.host}:{gfd.port}", lambda: self.config.tunables, "gfd")

    @property
    def tunables(self):
        return self.config.tunables

    def status_line(self) -> str:
        stable = "" if self.stable else ", not stable yet"
        return f"{members_line('GFD', self.membership)} (membership view {self.view}{stable})"

    async def start(self) -> None:
        gfd = self.config.gfd
        self._server = await listen(self._new_conn, gfd.host, gfd.port, tls=self.tls)
        log.info("GFD: listening on %s:%d, heartbeating LFDs every %.0f ms", gfd.host, gfd.port,
                 self.tunables.gfd_heartbeat_interval * 1000)
        log.info(members_line("GFD", []), extra={"kind": "membership"})
        self._tasks = [spawn(self._heartbeats(), "heartbeats"),
                       spawn(self._rm_loop(), "rm")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for link in list(self.lfds.values()):
            link.conn.close()
        if self._rm_conn is not None:
            self._rm_conn.close()
        self.gate.close()

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("GFD: reload refused, keeping the running configuration: %s", exc)
            return
        changes = describe_changes(self.config, new)
        self.config = new
        log.info("GFD: configuration reloaded: %s", "; ".join(changes) if changes else "no change")
        for rid in [r for r in self.lfds if r not in new.replica_ids]:
            self.lfds.pop(rid).conn.close()
            self._set_member(rid, False, {"reason": "removed from the configuration",
                                          "confirmed_dead": False})

    # ===================================================================== membership ====
    def _set_member(self, replica: str, present: bool, detail: dict[str, Any]) -> None:
        members = set(self.membership)
        if (replica in members) == present:
            return
        if present:
            members.add(replica)
        else:
            members.discard(replica)
        self.membership = sorted(members, key=lambda r: int(r[1:]))
        self.view += 1
        at = detail.get("at")  # when the LFD saw it; relayed only if it is a time
        change = {"replica": replica, "kind": "add" if present else "delete", "view": self.view,
                  "at": at if isinstance(at, int | float) and not isinstance(at, bool) and at
                  else time.time(), "gfd_at": time.time(),
                  "reason": str(detail.get("reason") or ""),
                  "confirmed_dead": bool(detail.get("confirmed_dead"))}
        self.changes = [*self.changes[-99:], change]
        log.info(members_line("GFD", self.membership), extra={"kind": "membership"})
        self._check_stable()
        self.status_changed()
        self._send_membership([change])

    def _check_stable(self) -> None:
        if self.stable:
            return
        tun = self.tunables
        warmup = 3 * tun.gfd_heartbeat_interval * tun.gfd_heartbeat_misses + 0.5
        registered = set(self.lfds)
        if registered >= set(self.config.replica_ids) or \
                time.monotonic() - self.started > warmup:
            self.stable = True
            log.info("GFD: membership view %d is stable", self.view)
            self._send_membership([])

    def snapshot(self) -> dict[str, Any]:
        return {"view": self.view, "members": self.membership, "stable": self.stable,
                "lfds": {rid: {**link.state, "lfd": link.lfd,
                               "gfd_heartbeat_age": round(time.time() - link.last_ack, 3)}
                         for rid, link in self.lfds.items()},
                "gfd_heartbeat_interval": self.tunables.gfd_heartbeat_interval}

    def _send_membership(self, changes: list[dict[str, Any]]) -> None:
        if self._rm_conn is not None:
            self._rm_conn.send("membership", {**self.snapshot(), "changes": changes})

    # =========================================================================== LFDs ====
    def _new_conn(self) -> Conn:
        return Conn(self.key, self.tunables.max_frame, "GFD", on_message=self._on_message,
                    on_close=self._on_close, label="GFD<-?", gate=self.gate)

    def _on_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if conn.role is None:
            if kind != "hello" or msg.get("role") not in ("lfd", "admin"):
                raise WireError("protocol", "expected hello from an LFD or an operator")
            replica = msg.get("replica")
            # An LFD speaks only for the replica beside it: LFD1 for S1.
            lfd = self.config.replica(replica).lfd_id \
                if replica in self.config.replica_ids else None
            conn.claim(msg["role"], lfd if msg["role"] == "lfd" else None)
            if conn.role == "admin":
                conn.send("welcome", self.snapshot())
                return
            self._register(conn, msg)
            return
        if conn.role == "admin" and kind == "status_req":
            conn.send("status", self.snapshot())
            return
        if conn.role != "lfd":
            raise WireError("unknown_type", f"{kind!r} from an operator")
        replica = conn.peer_id or ""
        link = self.lfds.get(replica)
        if link is None or link.conn is not conn:
            return
        if kind == "hb_ack":
            require(msg, "n", int)
            link.outstanding = 0
            link.last_ack = time.time()
            link.state = msg
            if bool(msg.get("present")) != link.present:  # a report that crossed a heartbeat
                link.present = bool(msg.get("present"))
                self._set_member(replica, link.present, optional(msg, "last_change", dict) or {})
        elif kind in ("add", "delete"):
            link.present = kind == "add"
            link.state = {**link.state, "present": link.present, "last_change": msg}
            self._set_member(replica, link.present, msg)
        elif kind == "state":
            link.state = msg
        else:
            raise WireError("unknown_type", f"{kind!r} from an LFD")

    def _register(self, conn: Conn, msg: Message) -> None:
        replica = require(msg, "replica", str)
        lfd = require(msg, "id", str)
        if replica not in self.config.replica_ids:
            raise WireError("unknown_peer", f"{lfd} watches {replica!r}, not in the cluster")
        old = self.lfds.get(replica)
        if old is not None and old.conn is not conn:
            old.conn.on_close = None
            old.conn.close()
        conn.peer_id = replica
        conn.label = f"GFD<-{lfd}"
        link = LfdLink(conn, lfd, replica, bool(msg.get("present")), msg)
        self.lfds[replica] = link
        log.info("GFD: %s registered (%s %s)", lfd, replica,
                 "present" if link.present else "absent", extra={"kind": "membership"})
        conn.send("welcome", {"view": self.view})
        self._set_member(replica, link.present, optional(msg, "last_change", dict) or {})
        self._check_stable()

    def _on_close(self, conn: Conn) -> None:
        replica = conn.peer_id
        if conn.role != "lfd" or replica is None:
            return
        link = self.lfds.get(replica)
        if link is None or link.conn is not conn:
            return
        del self.lfds[replica]
        log.warning("GFD: lost %s; %s presumed lost", link.lfd, replica,
                    extra={"kind": "membership"})
        self._set_member(replica, False, {"reason": f"{link.lfd} lost (connection closed)",
                                          "confirmed_dead": False})

    async def _heartbeats(self) -> None:
        while True:
            tun = self.tunables
            await asyncio.sleep(tun.gfd_heartbeat_interval)
            self._hb_count += 1
            for replica, link in list(self.lfds.items()):
                if link.outstanding >= tun.gfd_heartbeat_misses:
                    log.warning("GFD: %s missed %d heartbeats; %s presumed lost", link.lfd,
                                link.outstanding, replica, extra={"kind": "membership"})
                    link.conn.on_close = None
                    link.conn.abort()
                    del self.lfds[replica]
                    self._set_member(replica, False, {
                        "reason": f"{link.lfd} missed {link.outstanding} heartbeats",
                        "confirmed_dead": False})
                    continue
                link.outstanding += 1
                if self.config.trace.heartbeats:
                    log.info("[%d] GFD sending heartbeat to %s", self._hb_count, link.lfd,
                             extra={"kind": "heartbeat"})
                link.conn.send("hb", {"n": self._hb_count})
            self._check_stable()

    # ============================================================================ RM ====
    async def _rm_loop(self) -> None:
        def dial() -> Awaitable[Conn]:
            rm = self.config.rm
            return connect(rm.host, rm.port, self.key, self.tunables.max_frame, "GFD",
                           timeout=self.tunables.connect_timeout,
                           on_message=self._on_rm_message, label="GFD->RM",
                           tls=self.tls, expect="rm RM")

        async def registered(conn: Conn) -> None:
            self._rm_conn = conn
            conn.send("hello", {"role": "gfd"})
            log.info("GFD: registered with the RM")
            self._send_membership([])
            await conn.closed
            self._rm_conn = None
            log.warning("GFD: lost the RM; reconnecting")

        def unreachable(exc: BaseException) -> None:
            rm = self.config.rm
            log.warning("GFD: RM at %s:%d unreachable (%s); retrying", rm.host, rm.port,
                        exc.__class__.__name__)

        await stay_connected(dial, registered, first=0.05, on_unreachable=unreachable)

    def _on_rm_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "status_req":
            conn.send("gfd_status", self.snapshot())
        elif kind in ("welcome", "ok"):
            return
        else:
            raise WireError("unknown_type", f"{kind!r} from the RM")
