"""The Replication Manager: decides views (primary / sequencer, epoch, ready set) and relaunches.

Inputs: the GFD's membership (who is up, and how each loss was seen) and every replica's
reports on its control port. Outputs: views, leases, relaunches, incidents. All decisions are
taken in ``decide()``, run after every event and on a short tick, from state it can rebuild after
a restart (its epoch counter excepted, kept on disk so an epoch is never issued twice).

Safety rules, in the order they are applied:
- a replica becomes electable only once the primary has confirmed a view that counts it, so a
  promoted replica always holds everything the old primary acknowledged;
- a replica leaves the electable set before the primary is told to stop waiting for it;
- every process start is a new incarnation: a replica that restarted has lost its state, so it
  leaves the electable set, and a restarted primary is a lost primary (never "back");
- an empty replica never leads while data may exist: with no electable replica the RM waits and
  says why (unavailable beats lossy) until one comes back or an operator forces a primary with
  ``ftds ctl force-primary S2 --accept-data-loss``;
- a primary that may still be running (a hang, a partition, a lost LFD) is replaced only after
  the longest lease granted to it ran out: it stops acknowledging first. A crash its LFD
  confirmed needs no wait.
What must survive a restart of the RM (epoch, last view, longest lease) is in ``store``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from ..config import ClusterConfig, ConfigError, ReplicaSpec, describe_changes, load_config
from ..gate import LISTEN_BACKLOG, Gate
from ..log import members_line
from ..sdnotify import nobody_listens
from ..supervise import spawn
from ..view import View
from ..wire import Conn, Message, WireError, connect, require, stay_connected
from .incidents import IncidentLog
from .launcher import make_launcher
from .metrics import RmMetrics
from .relaunch import Relauncher
from .store import RmRecord, RmStore

log = logging.getLogger("ftds.rm")

EMPTY_PRIMARY_KEEPS_EPOCH = faults.on("empty_primary_keeps_epoch")  # planted bug (tests only)
MAX_HOLD_REASON = 200  # characters of an operator's reason for a hold
LEASE_MARGIN = 0.1  # bound on message delay and clock-rate drift added to every lease wait


@dataclass
class ReplicaInfo:
    spec: ReplicaSpec
    conn: Conn | None = None
    report: dict[str, Any] = field(default_factory=dict)
    report_at: float = 0.0
    present: bool = False
    loss: dict[str, Any] = field(default_factory=dict)  # the GFD's last delete for it
    link_task: asyncio.Task[None] | None = None
    incarnation: str | None = None  # of the process that reported last


@dataclass
class Failover:
    old_primary: str
    epoch: int
    not_before: float  # monotonic
    reason: str
    since: float = 0.0  # monotonic: when the RM saw the loss


class ReplicationManager:
    name = "RM"

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config: ClusterConfig = load_config(config_path)
        self.key = self.config.read_key()
        self.state_dir = Path(self.config.rm_state_dir)
        self.replicas: dict[str, ReplicaInfo] = {
            s.id: ReplicaInfo(s) for s in self.config.replicas}
        self.view: View | None = None
        self.confirmed: set[str] = set()  # members the primary has confirmed it counts
        self.store = RmStore(self.state_dir)
        self.record: RmRecord = self.store.load()
        self.epoch_floor = self.record.epoch
        # Which members the last primary had vouched for when the previous RM stopped.
        self._start_view_epoch = (self.record.view or {}).get("epoch")
        self._start_confirmed = None if self.record.confirmed is None \
            else set(self.record.confirmed)
        self.gfd_conn: Conn | None = None
        self.gfd: dict[str, Any] = {"view": 0, "members": [], "stable": False, "lfds": {}}
        self.started = time.monotonic()
        # A lease granted before our start may still run: assume the longest one ever granted.
        self.lease_expiry = time.monotonic() + max(self.record.lease_max,
                                                   self.config.tunables.lease)
        self.unavailable = ""  # why no primary can be chosen without losing data, if so
        self.adopted = False  # the view in force was reported to us, not made by us
        if self.record.view is not None:
            # The last view we issued is in force until a newer one is reported: a replica that
            # reports an older one (it was cut off meanwhile) must never bring it back.
            try:
                self.view = View.from_wire(self.record.view)
            except WireError as exc:
                raise ConfigError(f"{self.store.path}: the RM's state file holds a bad view "
                                  f"({exc.detail})") from None
            self.adopted = True
        self.failover: Failover | None = None
        self.decisions: dict[str, str] = {}
        self.last_decision = "starting"
        self.status_changed: Callable[[], None] = nobody_listens  # the run loop sets it
        self.metrics = RmMetrics(self._status_snapshot, lambda: self.config.tunables)
        self.incidents = IncidentLog(str(self.state_dir), on_open=self.metrics.incident_opened,
                                     on_close=self.metrics.incident_closed)
        self.relauncher = Relauncher(self.config, make_launcher(self.config),
                                     self._relaunch_issued)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._gfd_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._deciding = False
        rm = self.config.rm
        self.gate = Gate(f"RM port {rm.host}:{rm.port}", lambda: self.config.tunables)

    # ====================================================================== lifecycle ====
    def status_line(self) -> str:
        """systemd's STATUS=: the view, and what the RM waits for (sent when it changes)."""
        view = self.view
        role = "sequencer" if self.config.mode == "active" else "primary"
        parts = [f"epoch {view.epoch}, {role} {view.primary}, ready {', '.join(view.members)}"
                 if view else "no view yet"]
        if self.failover is not None:
            parts.append(f"failover pending: {role} {self.failover.old_primary} lost "
                         f"({self.failover.reason})")
        if self.unavailable:
            parts.append(f"unavailable: {self.unavailable.split(';')[0]}")
        exhausted = sorted(rid for rid, s in self.relauncher.states.items() if s.exhausted)
        if exhausted:
            parts.append(f"restart budget exhausted: {', '.join(exhausted)}")
        if self.record.held:
            parts.append(f"held: {', '.join(sorted(self.record.held))}")
        if self.gfd_conn is None:
            parts.append("GFD not connected")
        elif not self.gfd.get("stable"):
            parts.append("GFD membership not stable yet")
        return "; ".join(parts)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rm = self.config.rm
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._server = await loop.create_server(self._new_conn, rm.host, rm.port,
                                                reuse_address=True, backlog=LISTEN_BACKLOG)
        log.info("RM: listening on %s:%d (%s mode, launcher %s, last epoch %d)", rm.host,
                 rm.port, self.config.mode, self.config.launcher, self.epoch_floor)
        if self.config.rm_metrics_port:
            await self.metrics.start(self.config.rm_metrics_address or rm.host,
                                     self.config.rm_metrics_port,
                                     self.config.rm_metrics_web_config)
        log.info(members_line("RM", []), extra={"kind": "membership"})
        for info in self.replicas.values():
            info.link_task = spawn(self._replica_link(info), f"link-{info.spec.id}")
        self._tasks = [spawn(self._ticker(), "tick")]

    async def stop(self) -> None:
        tasks = [*self._tasks, *(i.link_task for i in self.replicas.values() if i.link_task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.relauncher.stop()
        await self.metrics.close()
        if self._server is not None:
            self._server.close()
        for info in self.replicas.values():
            if info.conn is not None:
                info.conn.close()
        self.gate.close()

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("RM: reload refused, keeping the running configuration: %s", exc)
            return
        changes = describe_changes(self.config, new)
        if (new.rm_metrics_port, new.rm_metrics_address) != \
                (self.config.rm_metrics_port, self.config.rm_metrics_address):
            log.warning("RM: the metrics port or address changed: that takes a restart")
        self.metrics.reload_web_config(new.rm_metrics_web_config)  # certificates, users
        self.config = new
        self.relauncher.config = new
        for spec in new.replicas:
            info = self.replicas.get(spec.id)
            if info is None:
                info = self.replicas[spec.id] = ReplicaInfo(spec)
                info.link_task = spawn(self._replica_link(info), f"link-{info.spec.id}")
            elif info.spec != spec:
                info.spec = spec
                if info.conn is not None:
                    info.conn.close()  # reconnects to the new address
        for rid in [r for r in self.replicas if r not in new.replica_ids]:
            info = self.replicas.pop(rid)
            if info.link_task:
                info.link_task.cancel()
            if info.conn is not None:
                info.conn.close()
        log.info("RM: configuration reloaded: %s", "; ".join(changes) if changes else "no change")
        self.decide()

    # ========================================================================= epochs ====
    def _persist(self, view: View | None = None) -> None:
        """Written (and synced) before a view or epoch is used: a restarted RM never reuses
        an epoch and knows which replicas held the data."""
        record = self.record
        if view is not None:
            record.view = view.to_wire()
            record.epoch = max(record.epoch, view.epoch)
        record.epoch = max(record.epoch, self.epoch_floor)
        record.confirmed = sorted(self.confirmed)
        self.store.save(record)
        self.epoch_floor = record.epoch

    # ==================================================================== replicas ====
    async def _replica_link(self, info: ReplicaInfo) -> None:
        def dial() -> Awaitable[Conn]:
            tun = self.config.tunables
            spec = info.spec
            # Every message carries the current epoch: lease grants are fenced by it.
            return connect(spec.host, spec.control_port, self.key, tun.max_frame, "RM",
                           timeout=tun.connect_timeout,
                           epoch_fn=lambda: self.view.epoch if self.view else 0,
                           on_message=self._on_replica_message, label=f"RM->{spec.id}")

        async def linked(conn: Conn) -> None:
            conn.peer_id = info.spec.id
            info.conn = conn
            conn.send("hello", {"role": "rm", "id": "RM"})
            await conn.closed
            info.conn = None

        await stay_connected(dial, linked, cap=0.5)

    def _on_replica_message(self, conn: Conn, msg: Message) -> None:
        rid = conn.peer_id or ""
        info = self.replicas.get(rid)
        if info is None:
            return
        kind = msg["t"]
        if kind in ("welcome", "report", "view_ack", "status"):
            self._on_report(info, conn, msg, first=kind == "welcome")
        elif kind == "lease_req":
            self._on_lease_request(info, conn, msg)
        elif kind == "lagging":
            if not self._from_current_primary(info, msg):
                return  # a deposed primary (or anyone else) does not shrink this view
            members = [m for m in msg.get("members", []) if isinstance(m, str)]
            self._remove_members(members, f"{rid} reports them unreachable: "
                                          f"{msg.get('reason', '')}")
        elif kind == "error":
            log.error("RM: %s refused: %s", rid, msg.get("message"))
        else:
            raise WireError("unknown_type", f"{kind!r} from a replica")

    def _from_current_primary(self, info: ReplicaInfo, msg: Message) -> bool:
        view = self.view
        return (view is not None and info.spec.id == view.primary and msg.get("e") == view.epoch
                and info.incarnation is not None
                and view.made_for(info.spec.id, info.incarnation))

    def _on_report(self, info: ReplicaInfo, conn: Conn, msg: Message, first: bool) -> None:
        inc = msg.get("incarnation")
        if isinstance(inc, str) and inc != info.incarnation:
            view = self.view
            # Known before, or (first heard since our start) not the process the view counts.
            if info.incarnation is not None or (
                    view is not None and info.spec.id in view.members
                    and view.incarnation(info.spec.id) and not view.made_for(info.spec.id, inc)):
                self._restarted(info, inc)
            info.incarnation = inc
        info.report = msg
        info.report_at = time.monotonic()
        if self.adopted and self.view is not None and info.spec.id in self.view.members \
                and info.spec.id in self._vouched_before(self.view) \
                and self._same_process(info.spec.id, self.view):
            # A member of a view we found (we restarted) is confirmed once it reports as the
            # process that view counts, if its primary had vouched for it before we restarted
            # (it may have died since): the record says which members it had.
            self.confirmed.add(info.spec.id)
        reported = msg.get("view")
        if reported:
            try:
                view = View.from_wire(reported)
            except WireError:
                view = None
            if view is not None and (self.view is None or view.key > self.view.key):
                self._adopt(view, f"reported by {info.spec.id}")
        if first and self.view is not None and (not reported or
                                                View.from_wire(reported).key < self.view.key):
            conn.send("view", {"view": self.view.to_wire()})  # a replica that was away
        self._note_confirmation(info, msg)
        self.decide()

    def _restarted(self, info: ReplicaInfo, inc: str) -> None:
        """A new process: whatever the old one held is gone (state lives in memory)."""
        rid = info.spec.id
        view = self.view
        was_holder = rid in self.confirmed
        self.confirmed.discard(rid)
        if was_holder:
            old = info.incarnation or (view.incarnation(rid) if view is not None else None)
            log.warning("RM: %s restarted (incarnation %s -> %s): it no longer holds the data",
                        rid, old, inc, extra={"kind": "decision"})
        if view is not None and rid in view.members and rid != view.primary:
            # Out of the ready set until it has caught up again as the process it is now.
            self._remove_members([rid], "restarted without its state")

    def _adopt(self, view: View, why: str) -> None:
        """A view newer than ours exists (we restarted): take it as the current one."""
        self.view = view
        self.epoch_floor = max(self.epoch_floor, view.epoch)
        # Members of a view we did not make are confirmed if its primary had vouched for them
        # (our record says so), as long as the process reporting now is the one the view
        # counts; the others wait for the primary to vouch again.
        vouched = self._vouched_before(view)
        self.confirmed = {m for m in view.members
                          if m in vouched and self._same_process(m, view)}
        self.unavailable = ""
        self.adopted = True
        self._persist(view)
        log.info("RM: adopted view %s (%s)", view.describe(), why, extra={"kind": "decision"})

    def _vouched_before(self, view: View) -> set[str]:
        """Members of ``view`` that our record showed confirmed in its epoch when we started (a
        record from before confirmations were kept: all of them)."""
        if self._start_confirmed is None:
            return set(view.members)
        if self._start_view_epoch != view.epoch:
            return {view.primary}
        return self._start_confirmed | {view.primary}

    def _same_process(self, rid: str, view: View) -> bool:
        """Whether ``rid``'s current process is the one ``view`` counts (unknown: not yet)."""
        info = self.replicas.get(rid)
        if info is None:
            return False
        if info.incarnation is None:
            return not view.incarnation(rid)  # an old view without incarnations: trust it
        return view.made_for(rid, info.incarnation)

    def _known_restarted(self, rid: str, view: View) -> bool:
        info = self.replicas.get(rid)
        return info is None or (info.incarnation is not None
                                and not self._same_process(rid, view))

    def _note_confirmation(self, info: ReplicaInfo, msg: Message) -> None:
        view = self.view
        if view is None or info.spec.id != view.primary:
            return
        reported = msg.get("view") or {}
        commit = msg.get("commit")
        if isinstance(commit, int) and commit > self.record.committed_seq \
                and reported.get("epoch") == view.epoch:
            self.record.committed_seq = commit  # kept on the next write of the record
        vouched = msg.get("vouched")
        if "vouched" in msg:
            # Its members hold everything it committed before it took this view.
            current = vouched == [view.epoch, view.version]
        else:  # a replica from before vouching: the view in force, out of its view change
            current = reported.get("epoch") == view.epoch \
                and reported.get("version") == view.version and not msg.get("recovering")
        if current:
            newly = set(view.members) - self.confirmed
            # Vouched for as the processes the view counts: a member not heard since our start
            # stays vouched (it is checked against the view when it reports, and at election);
            # only one known to have restarted is not.
            self.confirmed = {m for m in view.members if not self._known_restarted(m, view)}
            if newly:
                self._persist()
            for rid in newly:
                self.incidents.mark(rid, "ready")
                self._decide_note(rid, f"ready: admitted to the membership by {view.primary}")

    def _on_lease_request(self, info: ReplicaInfo, conn: Conn, msg: Message) -> None:
        n = require(msg, "n", int)
        view = self.view
        if view is None or info.spec.id != view.primary or msg["e"] != view.epoch:
            return
        if self.failover is not None and self.failover.old_primary == view.primary:
            return  # it is being replaced: no more lease
        if not self._from_current_primary(info, msg):
            return
        duration = self.config.tunables.lease
        if duration > self.record.lease_max:
            self.record.lease_max = duration
            self._persist()  # before the grant: a restarted RM waits out this one too
        self.lease_expiry = max(self.lease_expiry, time.monotonic() + duration)
        conn.send("lease", {"n": n, "duration": duration})

    # ========================================================================== GFD ====
    def _new_conn(self) -> Conn:
        return Conn(self.key, self.config.tunables.max_frame, "RM", on_message=self._on_message,
                    on_close=self._on_close, label="RM<-?", gate=self.gate)

    def _on_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if conn.role is None:
            if kind != "hello" or msg.get("role") not in ("gfd", "admin"):
                raise WireError("protocol", "expected hello from the GFD or an operator")
            conn.role = msg["role"]
            if conn.role == "gfd":
                if self.gfd_conn is not None and self.gfd_conn is not conn:
                    self.gfd_conn.close()
                self.gfd_conn = conn
                conn.label = "RM<-GFD"
                log.info("RM: the GFD registered", extra={"kind": "membership"})
            conn.send("welcome", {"epoch": self.view.epoch if self.view else 0})
            return
        if conn.role == "gfd":
            if kind == "membership":
                self._on_membership(msg)
            elif kind == "gfd_status":
                waiters, self._gfd_waiters = self._gfd_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(msg)
            else:
                raise WireError("unknown_type", f"{kind!r} from the GFD")
            return
        self._on_admin(conn, msg)

    def _on_close(self, conn: Conn) -> None:
        if conn is self.gfd_conn:
            self.gfd_conn = None
            self.gfd["stable"] = False  # nothing is decided on a membership we cannot refresh
            log.warning("RM: lost the GFD; membership decisions wait for it")

    def _on_membership(self, msg: Message) -> None:
        members = [m for m in msg.get("members", []) if m in self.replicas]
        self.gfd = {"view": msg.get("view", 0), "members": members,
                    "stable": bool(msg.get("stable")), "lfds": msg.get("lfds", {}),
                    "gfd_heartbeat_interval": msg.get("gfd_heartbeat_interval")}
        for change in msg.get("changes", []):
            rid = change.get("replica")
            info = self.replicas.get(rid)
            if info is None:
                continue
            if change.get("kind") == "delete":
                info.loss = change
                # What it reported is stale: it is admitted again only on a new report.
                info.report = {}
                was_primary = self.view is not None and self.view.primary == rid
                cause = "crash" if change.get("confirmed_dead") else "lost"
                self.incidents.opened(rid, f"{cause}: {change.get('reason', '')}",
                                      was_primary=was_primary,
                                      confirmed_dead=bool(change.get("confirmed_dead")),
                                      detected=change.get("at"))
            else:
                info.loss = {}  # back: a later loss is judged on its own evidence
                self.incidents.mark(rid, "process_up", change.get("gfd_at"))
        for rid, info in self.replicas.items():
            present = rid in members
            if present and not info.present:
                self.relauncher.present(rid)
            info.present = present
        log.info(members_line("RM", members), extra={"kind": "membership"})
        self.metrics.changed()
        self.decide()

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
    def _decide_note(self, rid: str, text: str) -> None:
        self.decisions[rid] = text
        self.last_decision = f"{rid}: {text}"
        self.metrics.changed()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.decide()

    def decide(self) -> None:
        if self._deciding:
            return
        self._deciding = True
        try:
            self._decide()
        finally:
            self._deciding = False
        self.status_changed()  # every 20 ms at most; sent only when the text changed

    def _decide(self) -> None:
        if not self.gfd.get("stable"):
            return  # the GFD is (re)building its membership: no conclusions yet
        present = {rid for rid, info in self.replicas.items() if info.present}
        # A replica an operator holds for maintenance stays down: it is never relaunched.
        absent = [rid for rid in self.replicas
                  if rid not in present and rid not in self.record.held]
        if self.view is None:
            self._bootstrap(present)
            if self.view is None and absent and time.monotonic() - self.started >= 3.0:
                # Nobody else starts a replica (its unit does not restart itself): after an RM
                # restart that found every replica gone, the holders may only need a start.
                self.relauncher.tick(absent)
            return
        view = self.view
        if view.primary not in present or not self._primary_process_alive(view) \
                or self._unheard_since_loss(view.primary):
            self._failover(present)
        else:
            if self.failover is not None and self.failover.old_primary == view.primary:
                log.info("RM: %s is back before being replaced (same process); no failover",
                         view.primary, extra={"kind": "decision"})
                self.failover = None
            gone = [m for m in view.members if m != view.primary and m not in present]
            if gone:
                self._remove_members(gone, "lost per the GFD")
            self._admit(present)
        if absent:
            self.relauncher.tick(absent)

    def _unheard_since_loss(self, rid: str) -> bool:
        """A lost primary the GFD sees again is back only once it reported since the loss: the
        process on its ports may be a new one (empty), which only its report tells."""
        failover = self.failover
        return failover is not None and failover.old_primary == rid \
            and self.replicas[rid].report_at < failover.since

    def _primary_process_alive(self, view: View) -> bool:
        """False once the primary's process is known to have restarted: a new incarnation
        holds none of the state the view's primary had, so it is a lost primary."""
        info = self.replicas[view.primary]
        return EMPTY_PRIMARY_KEEPS_EPOCH or info.incarnation is None \
            or view.made_for(view.primary, info.incarnation)

    def _bootstrap(self, present: set[str]) -> None:
        fresh = sorted((rid for rid in present
                        if self.replicas[rid].report
                        and not self.replicas[rid].report.get("view")
                        and self.replicas[rid].report.get("seq") == 0),
                       key=lambda r: int(r[1:]))
        everyone = set(self.replicas)
        # Wait for every configured replica for a moment, so epoch 1 starts with all of them.
        if not fresh or (set(fresh) != everyone and time.monotonic() - self.started < 3.0):
            return
        if self.record.data_may_exist:
            last = self.record.view or {}
            self._wait_unavailable(
                f"no replica holds the data of epoch {last.get('epoch')} (ready then: "
                f"{', '.join(last.get('members') or [])}; commit index "
                f"{self.record.committed_seq}); the present ones are empty. Waiting for a "
                "holder; `ftds ctl force-primary <id> --accept-data-loss` starts over")
            return
        epoch = self.epoch_floor + 1
        view = self._make_view(epoch, 0, fresh[0], fresh)
        self.confirmed = set(fresh)
        self._issue(view, f"bootstrap: {fresh[0]} orders epoch {epoch} over {', '.join(fresh)}")

    def _wait_unavailable(self, why: str) -> None:
        if self.unavailable != why:
            self.unavailable = why
            self.last_decision = f"unavailable: {why}"
            log.error("RM: unavailable rather than lossy: %s", why, extra={"kind": "decision"})

    def _make_view(self, epoch: int, version: int, primary: str, members: list[str]) -> View:
        """A view naming the incarnation of each member it counts."""
        ordered = tuple(sorted(members, key=lambda r: int(r[1:])))
        incs = () if EMPTY_PRIMARY_KEEPS_EPOCH else tuple(
            (m, inc) for m in ordered if (inc := self.replicas[m].incarnation) is not None)
        return View(epoch, version, primary, ordered, incs=incs)

    def _failover(self, present: set[str]) -> None:
        view = self.view
        assert view is not None
        old = view.primary
        now = time.monotonic()
        if self.failover is None or self.failover.old_primary != old \
                or self.failover.epoch != view.epoch:
            loss = self.replicas[old].loss
            restarted = not self._primary_process_alive(view)
            # A new process on its ports means the old one is gone: no lease left to wait out.
            confirmed = bool(loss.get("confirmed_dead")) or restarted
            wait_until = now if confirmed else self.lease_expiry + LEASE_MARGIN
            reason = "restarted without its state" if restarted and not loss \
                else loss.get("reason", "absent")
            self.failover = Failover(old, view.epoch, wait_until, reason, since=now)
            self.incidents.mark(old, "removed")
            role = "sequencer" if self.config.mode == "active" else "primary"
            if confirmed:
                self._decide_note(old, f"{role} lost ({reason}); process exit confirmed: "
                                       "failing over now")
            else:
                self._decide_note(old, f"{role} lost ({reason}); waiting out its lease "
                                       f"({max(0.0, wait_until - now) * 1000:.0f} ms) first")
            log.warning("RM: %s", self.last_decision, extra={"kind": "decision"})
        elif now < self.failover.not_before and self.replicas[old].loss.get("confirmed_dead"):
            self.failover.not_before = now  # its exit is confirmed since: no lease to wait out
        if now < self.failover.not_before:
            return
        candidates = [m for m in view.members if m != old and m in present
                      and m in self.confirmed and self._same_process(m, view)]
        if not candidates:
            note = (f"no ready backup holds the data of epoch {view.epoch}; waiting for one "
                    "(unavailable rather than lossy; `ftds ctl force-primary <id> "
                    "--accept-data-loss` overrides)")
            if self.decisions.get(old) != note:
                self._decide_note(old, note)
                self._wait_unavailable(note)
            return
        def seq(rid: str) -> tuple[int, int]:
            return (int(self.replicas[rid].report.get("seq", 0)), -int(rid[1:]))
        new_primary = max(candidates, key=seq)
        epoch = max(self.epoch_floor, view.epoch) + 1
        new_view = self._make_view(epoch, 0, new_primary, candidates)
        self.failover = None
        self.confirmed = set(new_view.members)
        role = "sequencer" if self.config.mode == "active" else "primary"
        self._issue(new_view, f"{new_primary} is the new {role} (highest applied seq "
                              f"{seq(new_primary)[0]}), epoch {epoch}")
        self.incidents.mark(old, "new_primary", new_primary_id=new_primary)
        self._decide_note(old, f"replaced by {new_primary} in epoch {epoch}")

    def _remove_members(self, members: list[str], why: str) -> None:
        view = self.view
        if view is None:
            return
        gone = [m for m in members if m in view.members and m != view.primary]
        if not gone:
            return
        # Not electable first, then the primary stops waiting for them.
        self.confirmed -= set(gone)
        keep = tuple(m for m in view.members if m not in gone)
        for rid in gone:
            self.incidents.opened(rid, f"removed: {why}", was_primary=False,
                                  confirmed_dead=False)
            self.incidents.mark(rid, "removed")
            self._decide_note(rid, f"removed from the ready set ({why})")
        self._issue(View(view.epoch, view.version + 1, view.primary, keep,
                         incs=tuple(p for p in view.incs if p[0] in keep)),
                    f"{', '.join(gone)} removed ({why})")

    def _admit(self, present: set[str]) -> None:
        view = self.view
        assert view is not None
        if set(view.members) - self.confirmed:
            return  # the last admission is not confirmed yet: one step at a time
        joining = []
        for rid in sorted(present, key=lambda r: int(r[1:])):
            if rid in view.members:
                continue
            report = self.replicas[rid].report
            rview = report.get("view") or {}
            # Caught up in *this* view: a report from before a removal is stale (it caught up
            # with a stream the primary has since stopped waiting for).
            if report.get("caught_up") and rview.get("epoch") == view.epoch \
                    and rview.get("version") == view.version \
                    and report.get("upstream") == view.primary \
                    and report.get("incarnation") == self.replicas[rid].incarnation:
                joining.append(rid)
        if joining:
            new_view = self._make_view(view.epoch, view.version + 1, view.primary,
                                       [*view.members, *joining])
            # Members already counted keep the incarnation the view had for them.
            kept = dict(new_view.incs)
            kept.update(dict(view.incs))
            new_view = View(new_view.epoch, new_view.version, new_view.primary,
                            new_view.members, incs=tuple(sorted(kept.items())))
            for rid in joining:
                self._decide_note(rid, f"caught up with {view.primary}: admitting")
            self._issue(new_view, f"admitting {', '.join(joining)}", primary_first=True)

    def _issue(self, view: View, why: str, primary_first: bool = False) -> None:
        self._persist(view)  # on disk before anyone hears of it
        self.view = view
        self.adopted = False
        if self.failover is None:  # still waiting for a holder: the reason stands
            self.unavailable = ""
        self.last_decision = why
        self.metrics.changed()
        log.info("RM: %s -> view %s", why, view.describe(), extra={"kind": "decision"})
        order = sorted(self.replicas.values(),
                       key=lambda i: 0 if (primary_first and i.spec.id == view.primary) else 1)
        for info in order:
            if info.conn is not None:
                info.conn.send("view", {"view": view.to_wire()})

    def _relaunch_issued(self, rid: str, at: float) -> None:
        self.incidents.opened(rid, "absent at start" if not self.replicas[rid].loss
                              else "lost", was_primary=False, confirmed_dead=False)
        self.incidents.mark(rid, "relaunch_issued", at)
        self._decide_note(rid, f"relaunch issued via {self.relauncher.launcher.kind}")

    # ======================================================================= operator ====
    def _on_admin(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "status_req":
            asyncio.get_running_loop().create_task(self._send_status(conn))
        elif kind == "incidents_req":
            conn.send("incidents", {"incidents": self.incidents.all()})
        elif kind == "reset_budget":
            rid = require(msg, "replica", str)
            if rid not in self.replicas:
                conn.send("error", {"code": "unknown_replica", "message": f"no replica {rid}"})
                return
            self.relauncher.reset(rid)
            conn.send("ok", {"replica": rid})
        elif kind == "hold":
            self._hold(conn, require(msg, "replica", str), require(msg, "reason", str))
        elif kind == "release":
            self._release(conn, require(msg, "replica", str))
        elif kind == "force_primary":
            self._force_primary(conn, require(msg, "replica", str),
                                msg.get("accept_data_loss") is True)
        else:
            raise WireError("unknown_type", f"{kind!r} is not an RM command")

    def _hold(self, conn: Conn, rid: str, reason: str) -> None:
        """Keep ``rid`` down for maintenance: the RM stops relaunching it (it does not stop a
        running one; the operator does, with systemctl) until it is released."""
        if rid not in self.replicas:
            conn.send("error", {"code": "unknown_replica", "message": f"no replica {rid}"})
            return
        reason = reason.strip() or "held by an operator"
        if len(reason) > MAX_HOLD_REASON or not reason.isprintable():
            conn.send("error", {"code": "bad_reason", "message": "the reason must be one "
                                f"printable line of at most {MAX_HOLD_REASON} characters"})
            return
        self.record.held[rid] = {"reason": reason, "at": time.time()}
        self._persist()
        log.warning("RM: %s held by an operator (%s): it will not be relaunched until "
                    "'ftds ctl release %s'", rid, reason, rid, extra={"kind": "decision"})
        self._decide_note(rid, f"held: {reason}")
        conn.send("ok", {"replica": rid, "reason": reason,
                         "present": self.replicas[rid].present})

    def _release(self, conn: Conn, rid: str) -> None:
        if rid not in self.replicas:
            conn.send("error", {"code": "unknown_replica", "message": f"no replica {rid}"})
            return
        if self.record.held.pop(rid, None) is None:
            conn.send("error", {"code": "not_held", "message": f"{rid} is not held"})
            return
        self._persist()
        self.relauncher.reset(rid)  # a fresh budget: the maintenance was not its failure
        log.info("RM: %s released: the RM relaunches it again when it is down", rid,
                 extra={"kind": "decision"})
        self._decide_note(rid, "released")
        conn.send("ok", {"replica": rid})

    def _force_primary(self, conn: Conn, rid: str, accept_data_loss: bool) -> None:
        """The operator's override of "unavailable rather than lossy": ``rid`` orders a new
        epoch alone with whatever it holds; whatever others acknowledged beyond it is lost."""
        def refuse(code: str, message: str) -> None:
            conn.send("error", {"code": code, "message": message})

        info = self.replicas.get(rid)
        if info is None:
            return refuse("unknown_replica", f"no replica {rid} in the cluster file")
        if not accept_data_loss:
            return refuse("refused", "force-primary needs accept_data_loss: it may lose "
                                     "acknowledged writes")
        if not info.present or info.incarnation is None:
            return refuse("not_present", f"{rid} is not up (or has not reported yet); start "
                                         "it first")
        seq = int(info.report.get("seq") or 0)
        epoch = max(self.epoch_floor, self.view.epoch if self.view else 0) + 1
        view = self._make_view(epoch, 0, rid, [rid])
        self.record.forced.append({"at": time.time(), "replica": rid, "epoch": epoch,
                                   "seq": seq, "committed_seq": self.record.committed_seq})
        self.failover = None
        self.confirmed = {rid}
        message = (f"operator forced {rid} (seq {seq}) to be the primary of epoch {epoch}; "
                   f"writes acknowledged beyond its seq (highest commit seen: "
                   f"{self.record.committed_seq}) are lost")
        log.critical("RM: %s", message, extra={"kind": "decision"})
        self.incidents.opened(rid, "operator override: force-primary", was_primary=False,
                              confirmed_dead=False)
        self._issue(view, message)
        conn.send("ok", {"replica": rid, "epoch": epoch, "message": message})
        return None

    async def _send_status(self, conn: Conn) -> None:
        conn.send("status", await self._status_snapshot())

    async def _status_snapshot(self) -> dict[str, Any]:
        """``ftds status`` (and a metrics scrape): with the GFD's heartbeat ages of now."""
        return self.status(await self.gfd_status() or self.gfd)

    def status(self, gfd: dict[str, Any]) -> dict[str, Any]:
        view = self.view
        lfds = gfd.get("lfds", {})
        replicas = {}
        now = time.monotonic()
        for rid, info in self.replicas.items():
            r = info.report
            lfd = lfds.get(rid, {})
            state = self.relauncher.states.get(rid)
            replicas[rid] = {
                "present": info.present,
                "connected": info.conn is not None,
                "ready": bool(view and rid in view.members and rid in self.confirmed
                              and info.present),
                "role": r.get("role") if info.present else "down",
                "i_am_ready": r.get("i_am_ready"),
                "seq": r.get("seq"),
                "checkpoint_count": r.get("checkpoint_count"),
                "epoch": r.get("epoch"),
                "pid": r.get("pid"),
                "incarnation": info.incarnation,
                "report_age": round(now - info.report_at, 3) if info.report_at else None,
                "heartbeat_age": lfd.get("heartbeat_age"),
                "heartbeat_interval": lfd.get("heartbeat_interval"),
                "heartbeat_misses": lfd.get("heartbeat_misses"),
                "lfd_pid": lfd.get("lfd_pid"),
                "restarts": state.total if state else 0,
                "budget_left": self.relauncher.budget_left(rid),
                "budget_exhausted": bool(state and state.exhausted),
                "relaunch": state.last_result if state else "",
                "decision": self.decisions.get(rid, ""),
                "held": (self.record.held.get(rid) or {}).get("reason"),
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
            "failover_pending": self.failover.reason if self.failover else None,
            "unavailable": self.unavailable or None,
            "committed_seq": self.record.committed_seq,
            "last_decision": self.last_decision,
            "rm_pid": os.getpid(),
            "replicas": replicas,
        }

