"""The Replication Manager's daemon: the I/O shell around its decisions (``core.RmCore``).

Inputs: the GFD's membership (who is up, and how each loss was seen), every replica's reports on
its control port, and operators' commands. The shell turns each message into a typed event,
steps the core with the monotonic time (and on a 20 ms tick, so waits run out), and carries out
the effects the core returns, in their order: write the record (``store``), send views and
answers, relaunch (``relaunch``), record incidents (``incidents``), log. The rules that keep
acknowledged writes safe are the core's, documented there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ClusterConfig, ConfigError, ReplicaSpec, describe_changes, load_config
from ..gate import Gate
from ..log import members_line
from ..sdnotify import nobody_listens
from ..supervise import fatal, spawn
from ..view import View
from ..wire import Conn, Message, WireError, connect, listen, optional, require, stay_connected
from . import core
from .core import Failover, RmCore, Settings
from .incidents import IncidentLog
from .launcher import make_launcher
from .metrics import RmMetrics
from .relaunch import Relauncher
from .store import RmStore

log = logging.getLogger("ftds.rm")


@dataclass
class ReplicaLink:
    """The RM's connection to one replica's control port."""

    spec: ReplicaSpec
    conn: Conn | None = None
    link_task: asyncio.Task[None] | None = None


def settings_of(config: ClusterConfig) -> Settings:
    return Settings(tuple(config.replica_ids), config.mode, config.tunables.lease)


class ReplicationManager:
    name = "RM"

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config: ClusterConfig = load_config(config_path)
        self.key = self.config.read_key()
        self.tls = self.config.link_tls("RM")
        self.state_dir = Path(self.config.rm_state_dir)
        self.links: dict[str, ReplicaLink] = {
            s.id: ReplicaLink(s) for s in self.config.replicas}
        self.store = RmStore(self.state_dir)
        try:
            self.core = RmCore(settings_of(self.config), self.store.load(), time.monotonic())
        except WireError as exc:
            raise ConfigError(f"{self.store.path}: the RM's state file holds a bad view "
                              f"({exc.detail})") from None
        self.gfd_conn: Conn | None = None
        self.gfd: dict[str, Any] = {"view": 0, "members": [], "stable": False, "lfds": {}}
        self.status_changed: Callable[[], None] = nobody_listens  # the run loop sets it
        self.metrics = RmMetrics(self._status_snapshot, lambda: self.config.tunables)
        self.incidents = IncidentLog(str(self.state_dir), on_open=self.metrics.incident_opened,
                                     on_close=self.metrics.incident_closed)
        self.relauncher = Relauncher(self.config, make_launcher(self.config),
                                     self._relaunch_issued)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._gfd_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self.halted = False  # the record could not be made durable: the RM is stopping
        # The epoch on messages to replicas: the view in force when the effect was decided.
        self._epoch_stamp: int | None = None
        rm = self.config.rm
        self.gate = Gate(f"RM port {rm.host}:{rm.port}", lambda: self.config.tunables, "rm")

    # What the simulator and ``ftds status`` read of the decisions.
    @property
    def view(self) -> View | None:
        return self.core.view

    @property
    def failover(self) -> Failover | None:
        return self.core.failover

    @property
    def unavailable(self) -> str:
        return self.core.unavailable

    # ====================================================================== lifecycle ====
    def status_line(self) -> str:
        """systemd's STATUS=: the view, and what the RM waits for (sent when it changes)."""
        view, failover = self.core.view, self.core.failover
        role = self.core.settings.role
        parts = [f"epoch {view.epoch}, {role} {view.primary}, ready {', '.join(view.members)}"
                 if view else "no view yet"]
        if failover is not None:
            parts.append(f"failover pending: {role} {failover.old_primary} lost "
                         f"({failover.reason})")
        if self.core.unavailable:
            parts.append(f"unavailable: {self.core.unavailable.split(';')[0]}")
        exhausted = sorted(rid for rid in list(self.relauncher.states)
                           if self.relauncher.exhausted(rid))
        if exhausted:
            parts.append(f"restart budget exhausted: {', '.join(exhausted)}")
        if self.core.record.held:
            parts.append(f"held: {', '.join(sorted(self.core.record.held))}")
        if self.gfd_conn is None:
            parts.append("GFD not connected")
        elif not self.gfd.get("stable"):
            parts.append("GFD membership not stable yet")
        return "; ".join(parts)

    async def start(self) -> None:
        rm = self.config.rm
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._server = await listen(self._new_conn, rm.host, rm.port, tls=self.tls)
        log.info("RM: listening on %s:%d (%s mode, launcher %s, last epoch %d)", rm.host,
                 rm.port, self.config.mode, self.config.launcher, self.core.epoch_floor)
        if self.config.rm_metrics_port:
            await self.metrics.start(self.config.rm_metrics_address or rm.host,
                                     self.config.rm_metrics_port,
                                     self.config.rm_metrics_web_config)
        log.info(members_line("RM", []), extra={"kind": "membership"})
        for link in self.links.values():
            link.link_task = spawn(self._replica_link(link), f"link-{link.spec.id}")
        self._tasks = [spawn(self._ticker(), "tick")]

    async def stop(self) -> None:
        tasks = [*self._tasks, *(i.link_task for i in self.links.values() if i.link_task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.relauncher.stop()
        await self.metrics.close()
        if self._server is not None:
            self._server.close()
        for link in self.links.values():
            if link.conn is not None:
                link.conn.close()
        self.gate.close()

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("RM: reload refused, keeping the running configuration: %s", exc)
            return
        changes = describe_changes(self.config, new)
        # As the replicas refuse it: they run the mode they started with.
        fixed = [c for c in changes if c.split(":")[0] in ("mode", "replication")]
        if fixed:
            log.error("RM: reload refused: %s need a restart of every replica; keeping the "
                      "running configuration", ", ".join(fixed))
            return
        if (new.rm_metrics_port, new.rm_metrics_address) != \
                (self.config.rm_metrics_port, self.config.rm_metrics_address):
            log.warning("RM: the metrics port or address changed: that takes a restart")
        self.metrics.reload_web_config(new.rm_metrics_web_config)  # certificates, users
        self.config = new
        self.relauncher.config = new
        for spec in new.replicas:
            link = self.links.get(spec.id)
            if link is None:
                link = self.links[spec.id] = ReplicaLink(spec)
                link.link_task = spawn(self._replica_link(link), f"link-{link.spec.id}")
            elif link.spec != spec:
                link.spec = spec
                if link.conn is not None:
                    link.conn.close()  # reconnects to the new address
        for rid in [r for r in self.links if r not in new.replica_ids]:
            link = self.links.pop(rid)
            if link.link_task:
                link.link_task.cancel()
            if link.conn is not None:
                link.conn.close()
        log.info("RM: configuration reloaded: %s", "; ".join(changes) if changes else "no change")
        self._step(core.Reconfigured(settings_of(new)))
        self.status_changed()

    # ======================================================================= effects ====
    def _step(self, event: core.Event, conn: Conn | None = None) -> None:
        """Feed ``event`` to the core and carry out its effects in order; ``conn`` is where
        the event came from (answers go there)."""
        if self.halted:
            return
        for effect in self.core.step(event, time.monotonic()):
            self._carry_out(effect, conn)
            if self.halted:
                return

    def _carry_out(self, effect: core.Effect, conn: Conn | None) -> None:
        match effect:
            case core.Log():
                log.log(effect.level, effect.msg, *effect.args,
                        extra={"kind": effect.kind} if effect.kind else None)
            case core.Persist():
                try:
                    self.store.save(effect.record)
                except OSError as exc:
                    self._halt(exc)
            case core.SendView():
                self._send_view(effect.view, effect.primary_first)
            case core.Reply():
                if conn is not None:
                    self._epoch_stamp = effect.epoch
                    try:
                        conn.send(effect.kind, effect.fields)
                    finally:
                        self._epoch_stamp = None
            case core.Reject():
                raise WireError(effect.code, effect.detail)
            case core.OpenIncident():
                self.incidents.opened(effect.replica, effect.cause,
                                      was_primary=effect.was_primary,
                                      confirmed_dead=effect.confirmed_dead,
                                      detected=effect.detected)
            case core.MarkIncident():
                extra = {} if effect.new_primary_id is None \
                    else {"new_primary_id": effect.new_primary_id}
                self.incidents.mark(effect.replica, effect.step, effect.at, **extra)
            case core.Relaunch():
                self.relauncher.tick(list(effect.replicas))
            case core.ReplicaUp():
                self.relauncher.present(effect.replica)
            case core.ResetRelaunchBudget():
                self.relauncher.reset(effect.replica)
            case core.StatusChanged():
                self.metrics.changed()

    def _halt(self, exc: OSError) -> None:
        """The record could not be made durable: act on nothing more. A restarted RM reads the
        last record it did make durable, so a view sent now could be issued again, different."""
        self.halted = True
        log.critical("RM: cannot record its state in %s (%s); stopping before acting on it",
                     self.store.path, exc, extra={"kind": "decision"})
        fatal("persist", exc)

    def _send_view(self, view: View, primary_first: bool) -> None:
        order = sorted(self.links.values(),
                       key=lambda i: 0 if (primary_first and i.spec.id == view.primary) else 1)
        self._epoch_stamp = view.epoch
        try:
            for link in order:
                if link.conn is not None:
                    link.conn.send("view", {"view": view.to_wire()})
        finally:
            self._epoch_stamp = None

    def _link_epoch(self) -> int:
        if self._epoch_stamp is not None:
            return self._epoch_stamp
        return self.core.view.epoch if self.core.view else 0

    def _relaunch_issued(self, rid: str, at: float) -> None:
        self._step(core.RelaunchIssued(rid, at, self.relauncher.launcher.kind))

    # ====================================================================== replicas ====
    async def _replica_link(self, link: ReplicaLink) -> None:
        def dial() -> Awaitable[Conn]:
            tun = self.config.tunables
            spec = link.spec
            # Every message carries the current epoch: lease grants are fenced by it.
            return connect(spec.host, spec.control_port, self.key, tun.max_frame, "RM",
                           timeout=tun.connect_timeout, epoch_fn=self._link_epoch,
                           on_message=self._on_replica_message, label=f"RM->{spec.id}",
                           tls=self.tls, expect=f"replica {spec.id}")

        async def linked(conn: Conn) -> None:
            conn.peer_id = link.spec.id
            link.conn = conn
            conn.send("hello", {"role": "rm", "id": "RM"})
            await conn.closed
            link.conn = None

        await stay_connected(dial, linked, cap=0.5)

    def _on_replica_message(self, conn: Conn, msg: Message) -> None:
        rid = conn.peer_id or ""
        link = self.links.get(rid)
        if link is None:
            return
        kind = msg["t"]
        if kind in ("welcome", "report", "view_ack", "status"):
            self._on_report(link, conn, msg, first=kind == "welcome")
        elif kind == "lease_req":
            self._on_lease_request(link, conn, msg)
        elif kind == "lagging":
            raw = msg.get("members", [])
            members = tuple(m for m in raw if isinstance(m, str)) \
                if isinstance(raw, list) else ()
            self._step(core.Lagging(rid, msg.get("e"), members, f"{msg.get('reason', '')}"),
                       conn)
        elif kind == "error":
            log.error("RM: %s refused: %s", rid, msg.get("message"))
        else:
            raise WireError("unknown_type", f"{kind!r} from a replica")

    def _on_report(self, link: ReplicaLink, conn: Conn, msg: Message, first: bool) -> None:
        self._step(core.Report(link.spec.id, core.ReplicaReport.from_wire(msg), first), conn)
        self.status_changed()

    def _on_lease_request(self, link: ReplicaLink, conn: Conn, msg: Message) -> None:
        n = require(msg, "n", int)
        self._step(core.LeaseRequest(link.spec.id, n, msg.get("e")), conn)

    # =========================================================================== GFD ====
    def _new_conn(self) -> Conn:
        return Conn(self.key, self.config.tunables.max_frame, "RM", on_message=self._on_message,
                    on_close=self._on_close, label="RM<-?", gate=self.gate)

    def _on_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if conn.role is None:
            if kind != "hello" or msg.get("role") not in ("gfd", "admin"):
                raise WireError("protocol", "expected hello from the GFD or an operator")
            conn.claim(msg["role"], "GFD" if msg["role"] == "gfd" else None)
            if conn.role == "gfd":
                if self.gfd_conn is not None and self.gfd_conn is not conn:
                    self.gfd_conn.close()
                self.gfd_conn = conn
                conn.label = "RM<-GFD"
                log.info("RM: the GFD registered", extra={"kind": "membership"})
            view = self.core.view
            conn.send("welcome", {"epoch": view.epoch if view else 0})
            return
        if conn.role == "gfd":
            if kind == "membership":
                self._on_membership(msg)
            elif kind == "gfd_status":
                snapshot = gfd_snapshot(msg)
                waiters, self._gfd_waiters = self._gfd_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(snapshot)
            else:
                raise WireError("unknown_type", f"{kind!r} from the GFD")
            return
        self._on_admin(conn, msg)

    def _on_close(self, conn: Conn) -> None:
        if conn is self.gfd_conn:
            self.gfd_conn = None
            self.gfd["stable"] = False  # nothing is decided on a membership we cannot refresh
            self._step(core.GfdLost())

    def _on_membership(self, msg: Message) -> None:
        snapshot = gfd_snapshot(msg)
        changes = tuple(gfd_change(c) for c in require(msg, "changes", list))
        snapshot["members"] = [m for m in snapshot["members"] if m in self.links]
        self.gfd = snapshot
        self._step(core.Membership(tuple(snapshot["members"]), snapshot["stable"], changes))
        self.status_changed()

    async def gfd_status(self, timeout: float = 0.5) -> dict[str, Any] | None:
        if self.gfd_conn is None:
            return None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._gfd_waiters.append(fut)
        self.gfd_conn.send("status_req", {})
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None

    # ===================================================================== decisions ====
    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.decide()

    def decide(self) -> None:
        self._step(core.Tick())
        self.status_changed()  # every 20 ms at most; sent only when the text changed

    # ====================================================================== operator ====
    def _on_admin(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "status_req":
            asyncio.get_running_loop().create_task(self._send_status(conn))
        elif kind == "incidents_req":
            conn.send("incidents", {"incidents": self.incidents.all()})
        elif kind == "reset_budget":
            self._step(core.ResetBudget(require(msg, "replica", str)), conn)
        elif kind == "hold":
            self._step(core.Hold(require(msg, "replica", str), require(msg, "reason", str),
                                 time.time()), conn)
        elif kind == "release":
            self._step(core.Release(require(msg, "replica", str)), conn)
        elif kind == "force_primary":
            self._force_primary(conn, require(msg, "replica", str),
                                msg.get("accept_data_loss") is True)
        else:
            raise WireError("unknown_type", f"{kind!r} is not an RM command")

    def _force_primary(self, conn: Conn, rid: str, accept_data_loss: bool) -> None:
        self._step(core.ForcePrimary(rid, accept_data_loss, time.time()), conn)

    async def _send_status(self, conn: Conn) -> None:
        conn.send("status", await self._status_snapshot())

    async def _status_snapshot(self) -> dict[str, Any]:
        """``ftds status`` (and each metrics snapshot): with the GFD's heartbeat ages of now."""
        return self.status(await self.gfd_status() or self.gfd)

    def status(self, gfd: dict[str, Any]) -> dict[str, Any]:
        c = self.core
        view = c.view
        lfds = gfd.get("lfds", {})
        replicas = {}
        now = time.monotonic()
        for rid, link in self.links.items():
            info = c.replicas[rid]
            r = info.report or core.ReplicaReport()
            lfd = lfds.get(rid, {})
            state = self.relauncher.states.get(rid)
            replicas[rid] = {
                "present": info.present,
                "connected": link.conn is not None,
                "ready": bool(view and rid in view.members and rid in c.confirmed
                              and info.present),
                "role": r.role if info.present else "down",
                "i_am_ready": r.i_am_ready,
                "seq": r.seq,
                "checkpoint_count": r.checkpoint_count,
                "epoch": r.epoch,
                "pid": r.pid,
                "incarnation": info.incarnation,
                "report_age": round(now - info.report_at, 3) if info.report_at else None,
                "heartbeat_age": lfd.get("heartbeat_age"),
                "heartbeat_interval": lfd.get("heartbeat_interval"),
                "heartbeat_misses": lfd.get("heartbeat_misses"),
                "lfd_pid": lfd.get("lfd_pid"),
                "restarts": state.total if state else 0,
                "budget_left": self.relauncher.budget_left(rid),
                "budget_exhausted": self.relauncher.exhausted(rid),
                "relaunch": state.last_result if state else "",
                "decision": c.decisions.get(rid, ""),
                "held": (c.record.held.get(rid) or {}).get("reason"),
            }
        return {
            "mode": self.config.mode,
            "epoch": view.epoch if view else 0,
            "view_version": view.version if view else 0,
            "primary": view.primary if view else None,
            "members": list(view.members) if view else [],
            "membership": gfd.get("members", []),
            "membership_view": gfd.get("view", 0),
            "gfd_stable": bool(gfd.get("stable")),
            "gfd_connected": self.gfd_conn is not None,
            "gfd_heartbeat_interval": gfd.get("gfd_heartbeat_interval"),
            "failover_pending": c.failover.reason if c.failover else None,
            "unavailable": c.unavailable or None,
            "committed_seq": c.record.committed_seq,
            "last_decision": c.last_decision,
            "rm_pid": os.getpid(),
            "replicas": replicas,
        }


def gfd_change(change: Any) -> core.GfdChange:
    """One entry of the GFD's ``changes``, typed; WireError if it is not one."""
    if not isinstance(change, dict):
        raise WireError("malformed", "membership: a change is not an object")
    return core.GfdChange(
        kind="delete" if require(change, "kind", str) == "delete" else "add",
        replica=require(change, "replica", str),
        confirmed_dead=bool(change.get("confirmed_dead")),
        reason=None if change.get("reason") is None else str(change["reason"]),
        at=optional(change, "at", NUMBER), gfd_at=optional(change, "gfd_at", NUMBER))


NUMBER = (int, float)
# What the RM shows of each LFD (``ftds status``, metrics), as the GFD relays it.
LFD_FIELDS = {"heartbeat_age": NUMBER, "heartbeat_interval": NUMBER, "heartbeat_misses": int,
              "lfd_pid": int}


def gfd_snapshot(msg: Message) -> dict[str, Any]:
    """The GFD's membership and LFD states (``membership``, ``gfd_status``), checked: a field of
    the wrong shape is a WireError (the GFD's connection closes), never a status or a decision
    that breaks later."""
    members = require(msg, "members", list)
    if not all(isinstance(m, str) for m in members):
        raise WireError("malformed", f"{msg['t']}: field 'members' holds a non-string")
    # What an LFD said is relayed as it said it: a value of the wrong type is dropped, not
    # refused, or one bad LFD would cut the GFD from the RM.
    lfds = {rid: {name: _typed(state.get(name), kind) for name, kind in LFD_FIELDS.items()}
            if isinstance(state, dict) else {}
            for rid, state in (optional(msg, "lfds", dict) or {}).items()}
    return {"view": require(msg, "view", int), "members": members,
            "stable": require(msg, "stable", bool), "lfds": lfds,
            "gfd_heartbeat_interval": optional(msg, "gfd_heartbeat_interval", NUMBER)}


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None
