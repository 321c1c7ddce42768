"""The orderer's commit decisions, as a state machine that does no I/O.

``Commitment.step(event, now)`` takes one typed event (this replica took an epoch, applied up
to a seq, a member acknowledged or is known to hold a seq, the ready set changed, a lease came,
a tick) and the monotonic time, and returns the effects to carry out: answer what is now
committed, or ask the RM to drop members that hold the commit back. It holds no sockets,
tasks or clocks; :class:`~ftds.replica.core.Replica` is the shell that feeds it and carries
the effects out, and the unit tests drive it deterministically.

Safety rules:
- an entry is committed (answered) only once every member of the epoch's ready set has
  acknowledged it, after a view change too: a new orderer starts its epoch at commit 0, and
  whatever it holds from before counts only as its members acknowledge it;
- alone in its ready set (or with ``replication: async``), the orderer commits only under a
  live lease from the RM: a lapsed lease may mean another orderer was promoted;
- the orderer *vouches* for a view (the RM then counts its members as holders) only once every
  member acknowledged all that was committed when the view was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import faults

# Planted bugs (tests of the tests only; see ftds/faults.py).
DROP_ACKED_WRITE = faults.on("drop_acked_write")
ACK_AFTER_DEPOSED = faults.on("ack_after_deposed")
EARLY_COMMIT = faults.on("early_commit")
STALLED_AFTER = 0.2  # ack_after_deposed: seconds without commit progress before it fires


# ========================================================================= events ====
@dataclass(slots=True)
class TookEpoch:
    """This replica orders a new epoch; the view change collects the history first."""

    members: tuple[str, ...]  # the other members of the ready set


@dataclass(slots=True)
class Serving:
    """The view change is over: the orderer holds the epoch's history up to ``seq``."""

    seq: int


@dataclass(slots=True)
class LeftEpoch:
    """A view of another epoch came: this replica's orderer state of the old one is void."""


@dataclass(slots=True)
class ReadySet:
    """A view of the same epoch changed the ready set. ``holds``: what each member that
    subscribed already held then (an added member's acknowledgements count from there)."""

    members: tuple[str, ...]
    seq: int
    holds: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Applied:
    """The orderer applied entries up to ``seq`` (after a batch): commit what is held."""

    seq: int


@dataclass(slots=True)
class Acked:
    """A member acknowledged holding every entry up to ``seq``."""

    member: str
    seq: int


@dataclass(slots=True)
class Holds:
    """A member is known to hold ``seq`` (its catch-up was sent); no commit is tried."""

    member: str
    seq: int


@dataclass(slots=True)
class Lease:
    """The RM granted a lease until ``until`` (monotonic seconds). What it lets commit is
    committed at the next ``Applied`` or ``Tick``: the shell feeds one in its applier."""

    until: float


@dataclass(slots=True)
class Tick:
    """Time passed. ``lag_limit``: seconds a stuck commit waits before members are dropped."""

    seq: int
    lag_limit: float


Event = TookEpoch | Serving | LeftEpoch | ReadySet | Applied | Acked | Holds | Lease | Tick


# ======================================================================== effects ====
@dataclass(slots=True)
class Committed:
    """Everything up to ``upto`` is committed: answer it (and tell active members)."""

    upto: int


@dataclass(slots=True)
class DropLaggards:
    """Members that held the commit back for ``waited`` seconds: ask the RM to drop them."""

    members: tuple[str, ...]
    waited: float


Effect = Committed | DropLaggards
Effects = tuple[Effect, ...]
NOTHING: Effects = ()


# ==================================================================== the machine ====
class Commitment:
    """The commit index of this replica's epoch, while it orders one.

    ``waits_for_members``: False with ``replication: async`` in passive mode, where the
    primary answers under its lease without waiting for its backups.
    """

    def __init__(self, *, waits_for_members: bool = True) -> None:
        self.waits_for_members = waits_for_members
        self.serving = False  # orders this epoch, and its view change is over
        self.members: tuple[str, ...] = ()  # the others of the ready set
        self.commit = 0
        self.seq = 0  # what the orderer applied
        self.acked: dict[str, int] = {}  # per subscriber: the highest seq it holds
        self.lease_until = 0.0
        self.vouch_floor = 0  # the commit when the current view was taken
        self._stall_since = 0.0
        self._stall_commit = 0
        self._lag_reported = 0.0
        self._progress_at: float | None = None  # planted bug ack_after_deposed only

    def lease_ok(self, now: float) -> bool:
        return now < self.lease_until

    def vouches(self) -> bool:
        """Every member holds what was committed when the current view was taken."""
        return self.serving and all(self.acked.get(m, -1) >= self.vouch_floor
                                    for m in self.members)

    def step(self, event: Event, now: float) -> Effects:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not an orderer event: {event!r}")
        return handler(self, event, now)

    def _acked(self, event: Acked, now: float) -> Effects:
        member, seq = event.member, event.seq
        if seq <= self.acked.get(member, -1):
            return NOTHING
        self.acked[member] = seq
        return self._advance(now) if member in self.members else NOTHING

    def _applied(self, event: Applied, now: float) -> Effects:
        self.seq = event.seq
        return self._advance(now)

    def _holds(self, event: Holds, now: float) -> Effects:
        if event.member in self.members:
            self.acked[event.member] = max(self.acked.get(event.member, 0), event.seq)
        return NOTHING

    def _lease(self, event: Lease, now: float) -> Effects:
        self.lease_until = max(self.lease_until, event.until)
        return NOTHING

    def _tick(self, event: Tick, now: float) -> Effects:
        self.seq = event.seq
        if not self.members or ACK_AFTER_DEPOSED:
            return self._advance(now)  # lease-bound commit when alone
        return self._laggards(now, event.lag_limit) if self.serving else NOTHING

    def _ready_set(self, event: ReadySet, now: float) -> Effects:
        before, members = set(self.members), event.members
        self.members, self.seq = members, event.seq
        # Entries committed before this view may still be on their way to a member it adds:
        # the view is vouched for once every member holds them.
        self.vouch_floor = self.commit
        for member in members:
            if member not in before and member in event.holds:
                self.acked.setdefault(member, event.holds[member])
        for member in before - set(members):
            self.acked.pop(member, None)
        return self._advance(now)

    def _took_epoch(self, event: TookEpoch, now: float) -> Effects:
        self.serving = False
        self.members = event.members
        self.commit = self.vouch_floor = 0
        return NOTHING

    def _serving(self, event: Serving, now: float) -> Effects:
        self.seq = event.seq
        self.serving = True
        # A stall is timed from here: not from process start, not from another epoch.
        self._stall_since, self._stall_commit = now, 0
        # Nothing of the history is committed in this epoch until every ready member holds it
        # (their acks of the catch-up say so): a retry held during the view change is answered
        # only then, so this orderer's crash cannot lose it.
        self.commit = event.seq if EARLY_COMMIT else 0
        return NOTHING

    def _left_epoch(self, event: LeftEpoch, now: float) -> Effects:
        self.serving = False
        self.members = ()
        self.acked.clear()
        self.lease_until = 0.0
        return NOTHING

    def _advance(self, now: float) -> Effects:
        if not self.serving:
            return NOTHING
        new = self.seq
        if DROP_ACKED_WRITE or (ACK_AFTER_DEPOSED and self._stalled(now)):
            pass  # planted bugs: acknowledge without the backups
        elif not self.waits_for_members:
            if not self.lease_ok(now):
                return NOTHING
        elif self.members:
            for member in self.members:
                acked = self.acked.get(member, -1)
                if acked < new:
                    new = acked
        elif not self.lease_ok(now):
            return NOTHING  # alone: only a live lease proves nobody else was promoted
        if new <= self.commit:
            return NOTHING
        self.commit = new
        return (Committed(new),)

    def _laggards(self, now: float, limit: float) -> Effects:
        """Commits stuck on a ready member (its stream broke, or it is cut off from us while
        its LFD still sees it): the RM is asked to take it out of the ready set."""
        if self.commit >= self.seq or self.commit > self._stall_commit:
            self._stall_since = now
            self._stall_commit = self.commit
            return NOTHING
        if now - self._stall_since < limit or now - self._lag_reported < limit:
            return NOTHING
        laggards = tuple(m for m in self.members if self.acked.get(m, -1) <= self.commit)
        if not laggards:
            return NOTHING
        self._lag_reported = now
        return (DropLaggards(laggards, now - self._stall_since),)

    def _stalled(self, now: float) -> bool:
        """Planted bug helper: no commit progress for a while although entries wait."""
        if self.commit >= self.seq:
            self._progress_at = now
            return False
        return self._progress_at is not None and now - self._progress_at > STALLED_AFTER


# One handler per event type: a dict lookup, cheaper than a match on the hot path (an ack per
# member and batch, an Applied per batch).
_HANDLERS = {
    Acked: Commitment._acked,
    Applied: Commitment._applied,
    Holds: Commitment._holds,
    Lease: Commitment._lease,
    Tick: Commitment._tick,
    ReadySet: Commitment._ready_set,
    TookEpoch: Commitment._took_epoch,
    Serving: Commitment._serving,
    LeftEpoch: Commitment._left_epoch,
}
