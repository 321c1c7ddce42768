"""The Replication Manager's decisions, as a state machine that does no I/O.

``RmCore.step(event, now)`` takes one typed event (the GFD's membership, a replica's report, a
lease request, an operator's command, a tick) and the monotonic time, updates the decision
state, and returns the effects to carry out, in order: persist this record, send this view,
answer this request, relaunch these replicas, open or mark this incident, log this line. It
holds no sockets, tasks, files or clocks: :class:`~ftds.rm.manager.ReplicationManager` is the
shell that turns wire messages into events and performs the effects, and the unit tests (and
the simulator, through the shell) drive it deterministically.

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
What must survive a restart of the RM (epoch, last view, longest lease) is the ``RmRecord``,
written by a ``Persist`` effect before the view it names is sent.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from .. import faults
from ..errors import WireError
from ..log import members_line
from ..view import View
from .store import RmRecord

EMPTY_PRIMARY_KEEPS_EPOCH = faults.on("empty_primary_keeps_epoch")  # planted bug (tests only)
MAX_HOLD_REASON = 200  # characters of an operator's reason for a hold
LEASE_MARGIN = 0.1  # bound on message delay and clock-rate drift added to every lease wait
BOOTSTRAP_WAIT = 3.0  # seconds a first view waits for every configured replica to report


@dataclass(frozen=True)
class Settings:
    """The part of the cluster file the decisions read."""

    replica_ids: tuple[str, ...]
    mode: str  # "passive" (a primary) or "active" (a sequencer)
    lease: float  # seconds granted per lease request

    @property
    def role(self) -> str:
        return "sequencer" if self.mode == "active" else "primary"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica says of itself (``welcome``, ``report``, ``view_ack``, ``status``)."""

    incarnation: str | None = None  # its process
    seq: int | None = None  # the highest seq it applied
    commit: int | None = None  # a primary's commit index
    view: Any = None  # the view it holds, as sent: the core parses it (and refuses a bad one)
    # [epoch, version] of the view whose members a primary vouches for (None: none yet).
    vouched: tuple[int, int] | None = None
    # Whether the report speaks of vouching at all: a replica from before vouching does not,
    # and then the view it holds, out of its view change, counts.
    vouches: bool = False
    recovering: bool = False  # a primary in its view change
    caught_up: bool = False  # a backup holds the primary's stream
    upstream: str | None = None  # whose stream it follows
    # Only shown by ``ftds status``.
    role: str | None = None
    i_am_ready: int | None = None  # 0 or 1
    checkpoint_count: int | None = None
    epoch: int | None = None
    pid: int | None = None

    @staticmethod
    def from_wire(msg: dict[str, Any]) -> ReplicaReport:
        """A report from its message; a field of the wrong type reads as not given."""
        vouched = msg.get("vouched")
        pair: tuple[int, int] | None = None
        if isinstance(vouched, list) and len(vouched) == 2:
            epoch, version = (_int(n) for n in vouched)
            if epoch is not None and version is not None:
                pair = (epoch, version)
        return ReplicaReport(
            incarnation=_str(msg.get("incarnation")), seq=_int(msg.get("seq")),
            commit=_int(msg.get("commit")), view=msg.get("view"),
            vouched=pair, vouches="vouched" in msg,
            recovering=bool(msg.get("recovering")), caught_up=bool(msg.get("caught_up")),
            upstream=_str(msg.get("upstream")), role=_str(msg.get("role")),
            i_am_ready=_int(msg.get("i_am_ready")),
            checkpoint_count=_int(msg.get("checkpoint_count")), epoch=_int(msg.get("epoch")),
            pid=_int(msg.get("pid")))

    @property
    def view_fields(self) -> dict[str, Any]:
        """The view as sent, for its epoch and version ({} when none or not an object)."""
        return self.view if isinstance(self.view, dict) else {}


@dataclass
class ReplicaState:
    """What the RM knows of one replica (rebuilt from reports after a restart)."""

    report: ReplicaReport | None = None  # its last report (none since a loss)
    report_at: float = 0.0  # monotonic
    present: bool = False  # in the GFD's membership
    loss: GfdChange | None = None  # the GFD's last delete for it, until it is back
    incarnation: str | None = None  # of the process that reported last
    # False once the operator removed it from the cluster file: it is kept only while a view
    # names it, as gone (never present, relaunched or elected), so that view can be replaced.
    configured: bool = True


@dataclass
class Failover:
    old_primary: str
    epoch: int
    not_before: float  # monotonic
    reason: str
    since: float = 0.0  # monotonic: when the RM saw the loss


# ========================================================================== events ====
@dataclass(frozen=True)
class GfdChange:
    """One add or delete in the GFD's membership."""

    kind: str  # "add" or "delete"
    replica: str
    confirmed_dead: bool = False  # its LFD saw the process exit: no lease to wait out
    reason: str | None = None  # None: the GFD gave none
    at: float | None = None  # wall time the loss was detected
    gfd_at: float | None = None  # wall time the GFD saw it back


@dataclass(frozen=True)
class Membership:
    """The GFD's membership, with the changes since its last one."""

    members: tuple[str, ...]
    stable: bool
    changes: tuple[GfdChange, ...] = ()


@dataclass(frozen=True)
class GfdLost:
    """The GFD's connection closed: its membership can no longer be refreshed."""


@dataclass(frozen=True)
class Report:
    """A replica's report (``welcome``, ``report``, ``view_ack`` or ``status``)."""

    replica: str
    report: ReplicaReport
    first: bool = False  # its welcome on a new link


@dataclass(frozen=True)
class Lagging:
    """A primary asks to drop backups it cannot reach."""

    replica: str
    epoch: Any
    members: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class LeaseRequest:
    replica: str
    n: int
    epoch: Any


@dataclass(frozen=True)
class Tick:
    """Time passed: waits (leases, the bootstrap's wait) may have run out."""


@dataclass(frozen=True)
class RelaunchIssued:
    replica: str
    at: float  # wall time
    via: str  # the launcher's kind


@dataclass(frozen=True)
class Reconfigured:
    settings: Settings


@dataclass(frozen=True)
class ResetBudget:
    replica: str


@dataclass(frozen=True)
class Hold:
    replica: str
    reason: str
    at: float  # wall time, for the record


@dataclass(frozen=True)
class Release:
    replica: str


@dataclass(frozen=True)
class ForcePrimary:
    replica: str
    accept_data_loss: bool
    at: float  # wall time, for the record


Event = (Membership | GfdLost | Report | Lagging | LeaseRequest | Tick | RelaunchIssued
         | Reconfigured | ResetBudget | Hold | Release | ForcePrimary)


# ========================================================================= effects ====
@dataclass(frozen=True)
class Log:
    level: int
    msg: str  # a %-format, as logging takes it
    args: tuple[Any, ...] = ()
    kind: str | None = None  # the log's "kind" extra: decision, membership

    @property
    def text(self) -> str:
        return self.msg % self.args if self.args else self.msg


@dataclass(frozen=True)
class Persist:
    """Write the record (durably) before carrying out anything after this."""

    record: RmRecord  # a copy: later changes in the same step are not in it


@dataclass(frozen=True)
class SendView:
    """Send ``view`` to every connected replica (the primary first if so asked)."""

    view: View
    primary_first: bool = False


@dataclass(frozen=True)
class Reply:
    """Answer on the connection the event came from; ``epoch`` is the envelope's on a replica's
    link (the view in force when it was decided)."""

    kind: str
    fields: dict[str, Any]
    epoch: int = 0


@dataclass(frozen=True)
class Reject:
    """The event's message is malformed: close its connection with this error."""

    code: str
    detail: str


@dataclass(frozen=True)
class OpenIncident:
    replica: str
    cause: str
    was_primary: bool
    confirmed_dead: bool
    detected: float | None = None  # wall time; None: now


@dataclass(frozen=True)
class MarkIncident:
    replica: str
    step: str  # one of incidents.STEPS
    at: float | None = None  # wall time; None: now
    new_primary_id: str | None = None


@dataclass(frozen=True)
class Relaunch:
    """Relaunch what is absent (the relauncher applies its backoff and budget)."""

    replicas: tuple[str, ...]


@dataclass(frozen=True)
class ReplicaUp:
    """The replica is in the membership again: a relaunch of it (if any) worked."""

    replica: str


@dataclass(frozen=True)
class ResetRelaunchBudget:
    replica: str


@dataclass(frozen=True)
class StatusChanged:
    """What ``ftds status`` and the metrics show changed."""


Effect = (Log | Persist | SendView | Reply | Reject | OpenIncident | MarkIncident | Relaunch
          | ReplicaUp | ResetRelaunchBudget | StatusChanged)


# ============================================================================ core ====
class RmCore:
    """The RM's decision state; ``step`` is the only way in."""

    def __init__(self, settings: Settings, record: RmRecord, now: float) -> None:
        """``record`` is what the last RM persisted; a bad view in it raises WireError."""
        self.settings = settings
        self.replicas: dict[str, ReplicaState] = {rid: ReplicaState()
                                                  for rid in settings.replica_ids}
        self.view: View | None = None
        self.confirmed: set[str] = set()  # members the primary has confirmed it counts
        self.record = record
        self.epoch_floor = record.epoch
        # Which members the last primary had vouched for when the previous RM stopped.
        self._start_view_epoch = (record.view or {}).get("epoch")
        self._start_confirmed = None if record.confirmed is None else set(record.confirmed)
        self.gfd_stable = False  # nothing is decided on a membership being (re)built
        self.started = now
        self.now = now
        # A lease granted before our start may still run: assume the longest one ever granted.
        self.lease_expiry = now + max(record.lease_max, settings.lease)
        self.unavailable = ""  # why no primary can be chosen without losing data, if so
        self.adopted = False  # the view in force was reported to us, not made by us
        if record.view is not None:
            # The last view we issued is in force until a newer one is reported: a replica that
            # reports an older one (it was cut off meanwhile) must never bring it back.
            self.view = View.from_wire(record.view)
            self.adopted = True
            self._keep_departed(self.view)
        self.failover: Failover | None = None
        self.decisions: dict[str, str] = {}
        self.last_decision = "starting"
        self._out: list[Effect] = []

    def step(self, event: Event, now: float) -> list[Effect]:
        """Apply ``event`` at monotonic time ``now``; the effects to carry out, in order."""
        self.now = now
        self._out = out = []  # a fresh list: the shell may step again while carrying it out
        match event:
            case Tick():
                self._decide()
            case Report():
                self._on_report(event)
            case Membership():
                self._on_membership(event)
            case LeaseRequest():
                self._on_lease_request(event)
            case Lagging():
                if self._from_current_primary(event.replica, event.epoch):
                    # A deposed primary (or anyone else) does not shrink this view.
                    self._remove_members(list(event.members), f"{event.replica} reports them "
                                                              f"unreachable: {event.reason}")
            case GfdLost():
                self.gfd_stable = False
                self._log(logging.WARNING, "RM: lost the GFD; membership decisions wait for it")
            case RelaunchIssued():
                self._relaunch_issued(event)
            case Reconfigured():
                self._reconfigure(event.settings)
            case ResetBudget():
                if self._known(event.replica, "no replica {}"):
                    self._out.append(ResetRelaunchBudget(event.replica))
                    self._reply("ok", {"replica": event.replica})
            case Hold():
                self._hold(event)
            case Release():
                self._release(event.replica)
            case ForcePrimary():
                self._force_primary(event)
        return out

    # ======================================================================= helpers ====
    def _log(self, level: int, msg: str, *args: Any, kind: str | None = None) -> None:
        self._out.append(Log(level, msg, args, kind))

    def _reply(self, kind: str, fields: dict[str, Any]) -> None:
        self._out.append(Reply(kind, fields, self.view.epoch if self.view else 0))

    def _known(self, rid: str, message: str) -> bool:
        if rid in self.replicas and self.replicas[rid].configured:
            return True
        self._reply("error", {"code": "unknown_replica", "message": message.format(rid)})
        return False

    def _decide_note(self, rid: str, text: str) -> None:
        self.decisions[rid] = text
        self.last_decision = f"{rid}: {text}"
        self._out.append(StatusChanged())

    def _persist(self, view: View | None = None) -> None:
        """Written (and synced) before a view or epoch is used: a restarted RM never reuses
        an epoch and knows which replicas held the data."""
        record = self.record
        if view is not None:
            record.view = view.to_wire()
            record.epoch = max(record.epoch, view.epoch)
        record.epoch = max(record.epoch, self.epoch_floor)
        record.confirmed = sorted(self.confirmed)
        self._out.append(Persist(copy.deepcopy(record)))
        self.epoch_floor = record.epoch

    def _reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        for rid in settings.replica_ids:
            self.replicas.setdefault(rid, ReplicaState()).configured = True
        for rid in [r for r in self.replicas if r not in settings.replica_ids]:
            self.replicas[rid].configured = False
            self.replicas[rid].present = False
        self._forget_departed()
        self._decide()

    def _keep_departed(self, view: View) -> None:
        """Members of ``view`` missing from the cluster file are known, as removed from it."""
        for rid in (view.primary, *view.members):
            if rid not in self.replicas:
                self.replicas[rid] = ReplicaState(configured=False)

    def _forget_departed(self) -> None:
        named = set() if self.view is None else {self.view.primary, *self.view.members}
        for rid in [r for r, info in self.replicas.items()
                    if not info.configured and r not in named]:
            del self.replicas[rid]

    # ====================================================================== replicas ====
    def _from_current_primary(self, rid: str, epoch: Any) -> bool:
        view = self.view
        info = self.replicas.get(rid)
        return (view is not None and info is not None and rid == view.primary
                and epoch == view.epoch and info.incarnation is not None
                and view.made_for(rid, info.incarnation))

    def _on_report(self, event: Report) -> None:
        rid, report = event.replica, event.report
        info = self.replicas.get(rid)
        if info is None:
            return
        inc = report.incarnation
        if inc is not None and inc != info.incarnation:
            view = self.view
            # Known before, or (first heard since our start) not the process the view counts.
            if info.incarnation is not None or (
                    view is not None and rid in view.members
                    and view.incarnation(rid) and not view.made_for(rid, inc)):
                self._restarted(rid, inc)
            info.incarnation = inc
        info.report = report
        info.report_at = self.now
        if self.adopted and self.view is not None and rid in self.view.members \
                and rid in self._vouched_before(self.view) \
                and self._same_process(rid, self.view):
            # A member of a view we found (we restarted) is confirmed once it reports as the
            # process that view counts, if its primary had vouched for it before we restarted
            # (it may have died since): the record says which members it had.
            self.confirmed.add(rid)
        reported = report.view
        view = bad = None
        if reported:
            try:
                view = View.from_wire(reported)
            except WireError as exc:
                bad = exc
            if view is not None and (self.view is None or view.key > self.view.key):
                self._adopt(view, f"reported by {rid}")
        if event.first and self.view is not None:
            if bad is not None:
                self._out.append(Reject(bad.code, bad.detail))
                return
            if view is None or view.key < self.view.key:
                self._reply("view", {"view": self.view.to_wire()})  # a replica that was away
        self._note_confirmation(rid, report)
        self._decide()

    def _restarted(self, rid: str, inc: str) -> None:
        """A new process: whatever the old one held is gone (state lives in memory)."""
        info = self.replicas[rid]
        view = self.view
        was_holder = rid in self.confirmed
        self.confirmed.discard(rid)
        if was_holder:
            old = info.incarnation or (view.incarnation(rid) if view is not None else None)
            self._log(logging.WARNING, "RM: %s restarted (incarnation %s -> %s): it no longer "
                      "holds the data", rid, old, inc, kind="decision")
        if view is not None and rid in view.members and rid != view.primary:
            # Out of the ready set until it has caught up again as the process it is now.
            self._remove_members([rid], "restarted without its state")

    def _adopt(self, view: View, why: str) -> None:
        """A view newer than ours exists (we restarted): take it as the current one."""
        self.view = view
        self._keep_departed(view)
        self._forget_departed()
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
        self._log(logging.INFO, "RM: adopted view %s (%s)", view.describe(), why,
                  kind="decision")

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

    def _note_confirmation(self, rid: str, report: ReplicaReport) -> None:
        view = self.view
        if view is None or rid != view.primary:
            return
        reported = report.view_fields
        commit = report.commit
        if commit is not None and commit > self.record.committed_seq \
                and reported.get("epoch") == view.epoch:
            self.record.committed_seq = commit  # kept on the next write of the record
        if report.vouches:
            # Its members hold everything it committed before it took this view.
            current = report.vouched == (view.epoch, view.version)
        else:  # a replica from before vouching: the view in force, out of its view change
            current = reported.get("epoch") == view.epoch \
                and reported.get("version") == view.version and not report.recovering
        if current:
            newly = set(view.members) - self.confirmed
            # Vouched for as the processes the view counts: a member not heard since our start
            # stays vouched (it is checked against the view when it reports, and at election);
            # only one known to have restarted is not.
            self.confirmed = {m for m in view.members if not self._known_restarted(m, view)}
            if newly:
                self._persist()
            for member in newly:
                self._out.append(MarkIncident(member, "ready"))
                self._decide_note(member, f"ready: admitted to the membership by {view.primary}")

    def _on_lease_request(self, event: LeaseRequest) -> None:
        view = self.view
        if view is None or event.replica != view.primary or event.epoch != view.epoch:
            return
        if self.failover is not None and self.failover.old_primary == view.primary:
            return  # it is being replaced: no more lease
        if not self._from_current_primary(event.replica, event.epoch):
            return
        duration = self.settings.lease
        if duration > self.record.lease_max:
            self.record.lease_max = duration
            self._persist()  # before the grant: a restarted RM waits out this one too
        self.lease_expiry = max(self.lease_expiry, self.now + duration)
        self._reply("lease", {"n": event.n, "duration": duration})

    # =========================================================================== GFD ====
    def _on_membership(self, event: Membership) -> None:
        self.gfd_stable = event.stable
        members = [m for m in event.members if m in self.replicas and self.replicas[m].configured]
        for change in event.changes:
            rid = change.replica
            info = self.replicas.get(rid)
            if info is None or not info.configured:
                continue
            if change.kind == "delete":
                info.loss = change
                # What it reported is stale: it is admitted again only on a new report.
                info.report = None
                was_primary = self.view is not None and self.view.primary == rid
                cause = "crash" if change.confirmed_dead else "lost"
                reason = change.reason if change.reason is not None else ""
                self._out.append(OpenIncident(rid, f"{cause}: {reason}", was_primary,
                                              change.confirmed_dead, change.at))
            else:
                info.loss = None  # back: a later loss is judged on its own evidence
                self._out.append(MarkIncident(rid, "process_up", change.gfd_at))
        for rid, info in self.replicas.items():
            present = rid in members
            if present and not info.present:
                self._out.append(ReplicaUp(rid))
            info.present = present
        self._log(logging.INFO, members_line("RM", members), kind="membership")
        self._out.append(StatusChanged())
        self._decide()

    # ===================================================================== decisions ====
    def _decide(self) -> None:
        if not self.gfd_stable:
            return  # the GFD is (re)building its membership: no conclusions yet
        present = {rid for rid, info in self.replicas.items() if info.present}
        # A replica an operator holds for maintenance stays down: it is never relaunched.
        absent = [rid for rid, info in self.replicas.items()
                  if rid not in present and rid not in self.record.held and info.configured]
        if self.view is None:
            self._bootstrap(present)
            if self.view is None and absent and self.now - self.started >= BOOTSTRAP_WAIT:
                # Nobody else starts a replica (its unit does not restart itself): after an RM
                # restart that found every replica gone, the holders may only need a start.
                self._out.append(Relaunch(tuple(absent)))
            return
        view = self.view
        if view.primary not in present or not self._primary_process_alive(view) \
                or self._unheard_since_loss(view.primary):
            self._failover(present)
        else:
            if self.failover is not None and self.failover.old_primary == view.primary:
                self._log(logging.INFO, "RM: %s is back before being replaced (same process); "
                          "no failover", view.primary, kind="decision")
                self.failover = None
                # Its row in `ftds status` no longer says "lost" of the ready primary.
                self._decide_note(view.primary,
                                  "back before being replaced (same process); no failover")
            gone = [m for m in view.members if m != view.primary and m not in present]
            departed = [m for m in gone if not self.replicas[m].configured]
            if departed:
                self._remove_members(departed, "removed from the cluster file")
            if lost := [m for m in gone if m not in departed]:
                self._remove_members(lost, "lost per the GFD")
            self._admit(present)
        if absent:
            self._out.append(Relaunch(tuple(absent)))

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
                        if (report := self.replicas[rid].report) is not None
                        and not report.view and report.seq == 0),
                       key=lambda r: int(r[1:]))
        everyone = set(self.replicas)
        # Wait for every configured replica for a moment, so epoch 1 starts with all of them.
        if not fresh or (set(fresh) != everyone and self.now - self.started < BOOTSTRAP_WAIT):
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
            self._log(logging.ERROR, "RM: unavailable rather than lossy: %s", why,
                      kind="decision")

    def _make_view(self, epoch: int, version: int, primary: str, members: list[str]) -> View:
        """A view naming the incarnation of each member it counts."""
        ordered = tuple(sorted(members, key=lambda r: int(r[1:])))
        incs = () if EMPTY_PRIMARY_KEEPS_EPOCH else tuple(
            (m, inc) for m in ordered if (inc := self.replicas[m].incarnation) is not None)
        return View(epoch, version, primary, ordered, incs=incs)

    def _applied(self, rid: str) -> int:
        report = self.replicas[rid].report
        return 0 if report is None or report.seq is None else report.seq

    def _failover(self, present: set[str]) -> None:
        view = self.view
        assert view is not None
        old = view.primary
        now = self.now
        role = self.settings.role
        if self.failover is None or self.failover.old_primary != old \
                or self.failover.epoch != view.epoch:
            loss = self.replicas[old].loss
            restarted = not self._primary_process_alive(view)
            # A new process on its ports means the old one is gone: no lease left to wait out.
            confirmed = bool(loss and loss.confirmed_dead) or restarted
            wait_until = now if confirmed else self.lease_expiry + LEASE_MARGIN
            if not self.replicas[old].configured:
                reason = "removed from the cluster file"
            elif restarted and loss is None:
                reason = "restarted without its state"
            else:
                reason = "absent" if loss is None or loss.reason is None else loss.reason
            self.failover = Failover(old, view.epoch, wait_until, reason, since=now)
            self._out.append(MarkIncident(old, "removed"))
            if confirmed:
                self._decide_note(old, f"{role} lost ({reason}); process exit confirmed: "
                                       "failing over now")
            else:
                self._decide_note(old, f"{role} lost ({reason}); waiting out its lease "
                                       f"({max(0.0, wait_until - now) * 1000:.0f} ms) first")
            self._log(logging.WARNING, "RM: %s", self.last_decision, kind="decision")
        elif now < self.failover.not_before and (loss := self.replicas[old].loss) is not None \
                and loss.confirmed_dead:
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
            return (self._applied(rid), -int(rid[1:]))
        new_primary = max(candidates, key=seq)
        epoch = max(self.epoch_floor, view.epoch) + 1
        new_view = self._make_view(epoch, 0, new_primary, candidates)
        self.failover = None
        self.confirmed = set(new_view.members)
        self._issue(new_view, f"{new_primary} is the new {role} (highest applied seq "
                              f"{seq(new_primary)[0]}), epoch {epoch}")
        self._out.append(MarkIncident(old, "new_primary", new_primary_id=new_primary))
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
            self._out.append(OpenIncident(rid, f"removed: {why}", was_primary=False,
                                          confirmed_dead=False))
            self._out.append(MarkIncident(rid, "removed"))
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
            if report is None:
                continue
            rview = report.view_fields
            # Caught up in *this* view: a report from before a removal is stale (it caught up
            # with a stream the primary has since stopped waiting for).
            if report.caught_up and rview.get("epoch") == view.epoch \
                    and rview.get("version") == view.version \
                    and report.upstream == view.primary \
                    and report.incarnation == self.replicas[rid].incarnation:
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
        self._forget_departed()
        self.adopted = False
        if self.failover is None:  # still waiting for a holder: the reason stands
            self.unavailable = ""
        self.last_decision = why
        self._out.append(StatusChanged())
        self._log(logging.INFO, "RM: %s -> view %s", why, view.describe(), kind="decision")
        self._out.append(SendView(view, primary_first))

    def _relaunch_issued(self, event: RelaunchIssued) -> None:
        rid = event.replica
        info = self.replicas.get(rid)
        self._out.append(OpenIncident(rid, "absent at start" if info is None or info.loss is None
                                      else "lost", was_primary=False, confirmed_dead=False))
        self._out.append(MarkIncident(rid, "relaunch_issued", event.at))
        self._decide_note(rid, f"relaunch issued via {event.via}")

    # ====================================================================== operator ====
    def _hold(self, event: Hold) -> None:
        """Keep a replica down for maintenance: the RM stops relaunching it (it does not stop a
        running one; the operator does, with systemctl) until it is released."""
        rid = event.replica
        if not self._known(rid, "no replica {}"):
            return
        reason = event.reason.strip() or "held by an operator"
        if len(reason) > MAX_HOLD_REASON or not reason.isprintable():
            self._reply("error", {"code": "bad_reason", "message": "the reason must be one "
                                  f"printable line of at most {MAX_HOLD_REASON} characters"})
            return
        self.record.held[rid] = {"reason": reason, "at": event.at}
        self._persist()
        self._log(logging.WARNING, "RM: %s held by an operator (%s): it will not be relaunched "
                  "until 'ftds ctl release %s'", rid, reason, rid, kind="decision")
        self._decide_note(rid, f"held: {reason}")
        self._reply("ok", {"replica": rid, "reason": reason,
                           "present": self.replicas[rid].present})

    def _release(self, rid: str) -> None:
        if not self._known(rid, "no replica {}"):
            return
        if self.record.held.pop(rid, None) is None:
            self._reply("error", {"code": "not_held", "message": f"{rid} is not held"})
            return
        self._persist()
        # A fresh budget: the maintenance was not its failure.
        self._out.append(ResetRelaunchBudget(rid))
        self._log(logging.INFO, "RM: %s released: the RM relaunches it again when it is down",
                  rid, kind="decision")
        self._decide_note(rid, "released")
        self._reply("ok", {"replica": rid})

    def _force_primary(self, event: ForcePrimary) -> None:
        """The operator's override of "unavailable rather than lossy": the replica orders a new
        epoch alone with whatever it holds; whatever others acknowledged beyond it is lost."""
        rid = event.replica
        info = self.replicas.get(rid)
        if not self._known(rid, "no replica {} in the cluster file") or info is None:
            return
        if not event.accept_data_loss:
            self._reply("error", {"code": "refused", "message": "force-primary needs "
                                  "accept_data_loss: it may lose acknowledged writes"})
            return
        if not info.present or info.incarnation is None:
            self._reply("error", {"code": "not_present", "message": f"{rid} is not up (or has "
                                  "not reported yet); start it first"})
            return
        seq = self._applied(rid)
        epoch = max(self.epoch_floor, self.view.epoch if self.view else 0) + 1
        view = self._make_view(epoch, 0, rid, [rid])
        self.record.forced.append({"at": event.at, "replica": rid, "epoch": epoch,
                                   "seq": seq, "committed_seq": self.record.committed_seq})
        self.failover = None
        self.confirmed = {rid}
        message = (f"operator forced {rid} (seq {seq}) to be the primary of epoch {epoch}; "
                   f"writes acknowledged beyond its seq (highest commit seen: "
                   f"{self.record.committed_seq}) are lost")
        self._log(logging.CRITICAL, "RM: %s", message, kind="decision")
        self._out.append(OpenIncident(rid, "operator override: force-primary",
                                      was_primary=False, confirmed_dead=False))
        self._issue(view, message)
        self._reply("ok", {"replica": rid, "epoch": epoch, "message": message})
