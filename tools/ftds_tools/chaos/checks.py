"""The checks beyond linearizability: counters, executions, acknowledgements, epochs, digests.

- **counters**: per counter, acknowledged increments <= final value <= attempted increments;
- **executions** (from the replicas' ``EXEC``/``RESET`` lines): everything a replica executed
  stays on record, whatever came after it (a ``RESET`` to a checkpoint or a restart erases
  nothing). Every record is compared with every other replica's: two different requests at one
  sequence number are a *divergence*, one request executed at two sequence numbers is *executed
  twice*, and a ``RESET`` below what the same process had applied, and what the history kept,
  is *state moved backward*;
- **acknowledgements**: a write a client saw acknowledged as seq ``s`` of epoch ``e`` is in the
  history at ``s`` (no later epoch took over without it; no other request sits there);
- **epochs**: at most one replica took over each epoch, and no primary acknowledged anything
  the next epoch did not keep after it was deposed;
- **digests**: the ready replicas' state digests are equal at the end;
- **divergence log**: no replica reported ``DIVERGENCE`` (its digest differed from the
  primary's checkpoint at the same sequence number);
- **hostile input**: every request of the hostile session (overflowing ``incr``, values too
  deep or too large, keys too long, unknown operations, a reused ``request_num`` with another
  operation) was refused with an error; none was acknowledged.

An operator override (``force_primary`` with accepted data loss, which the nemesis uses after
``primary_crash_backups_out``) is the one sanctioned loss: ``excuse_forced_loss`` turns into
unknown outcomes exactly the operations the old primary acknowledged alone that the forced
epoch did not keep, and lists them; everything else is judged as always.

Entries a later epoch *abandoned* (it took over at a lower sequence number, so it never had
them) were never committed: a deposed or crashed orderer's tail, or what a member applied from
it. They stay on record but take no part in the comparisons; an acknowledgement of one is a lost
acknowledged write.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .history import Op

EXEC_RE = re.compile(r"EXEC (S\d+) seq=(\d+) e=(\d+) <([^,]+), (\d+)>( duplicate\S*)?")
RESET_RE = re.compile(r"RESET (S\d+) seq=(\d+)")
START_RE = re.compile(r"(S\d+): serving clients on")
# Written by whoever fetched the log when it knows lines of the run are missing (a rotated
# journal): what the replica did then is unknown, so no verdict on it can be trusted.
INCOMPLETE_RE = re.compile(r"^LOG INCOMPLETE (S\d+): (.*)$")
TAKEOVER_RE = re.compile(r"(S\d+): I am the (?:primary|sequencer) of epoch (\d+) \(seq (\d+)")
DIVERGENCE_RE = re.compile(
    r"(S\d+): DIVERGENCE at seq (\d+)(?:: my digest (\w+), primary's (\w+))?")
ORDERER_ROLES = ("primary", "sequencer")
LIMIT = 50  # problems listed per kind: the first ones say what happened
# A reply the killed primary had sent may reach its client a little after the kill.
KILL_SLACK = 1.0


@dataclass
class Problem:
    check: str
    text: str
    ops: list[Op] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "text": self.text,
                "ops": [o.describe() for o in self.ops]}


@dataclass(frozen=True)
class Exec:
    replica: str
    incarnation: int  # process starts seen before it in this replica's log
    seq: int
    epoch: int
    request: tuple[str, int]
    executed: bool  # False: the state machine refused it as a duplicate

    def show(self) -> str:
        return f"<{self.request[0]}, {self.request[1]}> (epoch {self.epoch})"


@dataclass(frozen=True)
class Reset:
    replica: str
    incarnation: int
    seq: int


@dataclass
class ReplicaTrace:
    replica: str
    events: list[Exec | Reset] = field(default_factory=list)  # in log order
    divergences: list[tuple[int, str]] = field(default_factory=list)  # (seq, what it said)
    incarnations: int = 0  # process starts in the log (it may begin mid-process)
    incomplete: str = ""  # why lines of the run are missing from the log, if they are

    @property
    def execs(self) -> list[Exec]:
        return [e for e in self.events if isinstance(e, Exec)]

    @property
    def resets(self) -> int:
        return sum(1 for e in self.events if isinstance(e, Reset))


@dataclass
class Takeover:
    replica: str
    epoch: int
    seq: int


def parse_replica_logs(logs: dict[str, str]) -> tuple[dict[str, ReplicaTrace], list[Takeover]]:
    traces: dict[str, ReplicaTrace] = {}
    takeovers: list[Takeover] = []
    for replica, text in logs.items():
        trace = traces.setdefault(replica, ReplicaTrace(replica))
        for line in text.splitlines():
            if m := EXEC_RE.search(line):
                trace.events.append(Exec(replica, trace.incarnations, int(m.group(2)),
                                         int(m.group(3)), (m.group(4), int(m.group(5))),
                                         not m.group(6)))
            elif m := RESET_RE.search(line):
                trace.events.append(Reset(replica, trace.incarnations, int(m.group(2))))
            elif START_RE.search(line):
                trace.incarnations += 1  # a new process: it starts empty
            elif m := TAKEOVER_RE.search(line):
                takeovers.append(Takeover(m.group(1), int(m.group(2)), int(m.group(3))))
            elif m := INCOMPLETE_RE.search(line):
                trace.incomplete = m.group(2)
            elif m := DIVERGENCE_RE.search(line):
                said = f"its digest {m.group(3)}, the primary's {m.group(4)}" if m.group(3) \
                    else line.strip()
                trace.divergences.append((int(m.group(2)), said))
    return traces, takeovers


class Kept:
    """Which entries the history kept: an entry of epoch e at seq s is abandoned when a later
    epoch took over at a seq below s (its orderer collected the longest history of the ready
    replicas, so anything committed is at or below its takeover seq)."""

    def __init__(self, takeovers: list[Takeover]) -> None:
        self._takeovers = takeovers
        self._floor: dict[int, Takeover | None] = {}

    def floor(self, epoch: int) -> Takeover | None:
        """The later epochs' takeover at the lowest seq."""
        if epoch not in self._floor:
            later = [t for t in self._takeovers if t.epoch > epoch]
            self._floor[epoch] = min(later, key=lambda t: (t.seq, t.epoch), default=None)
        return self._floor[epoch]

    def abandoned_by(self, seq: int, epoch: int) -> Takeover | None:
        t = self.floor(epoch)
        return t if t is not None and seq > t.seq else None


def _seqs(execs: list[Exec]) -> str:
    seqs = sorted({e.seq for e in execs})
    return f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}..{seqs[-1]}"


def check_executions(traces: dict[str, ReplicaTrace],
                     takeovers: list[Takeover]) -> list[Problem]:
    kept = Kept(takeovers)
    backward: list[Problem] = []
    for replica, trace in sorted(traces.items()):
        # What the current process holds, to judge each RESET against; a restart empties it.
        live: dict[int, Exec] = {}
        incarnation = -1
        for event in trace.events:
            if event.incarnation != incarnation:
                live, incarnation = {}, event.incarnation
            if isinstance(event, Exec):
                live[event.seq] = event
                continue
            dropped = [e for s, e in live.items() if s > event.seq]
            for e in dropped:
                del live[e.seq]
            committed = [e for e in dropped if kept.abandoned_by(e.seq, e.epoch) is None]
            if committed:
                backward.append(Problem(
                    "state moved backward",
                    f"{replica} reset to a checkpoint at seq {event.seq} after the same process "
                    f"(no restart in between) had applied seq {_seqs(committed)}, which every "
                    f"later epoch kept"))
    by_seq: dict[int, list[Exec]] = defaultdict(list)
    by_request: dict[tuple[str, int], dict[int, list[Exec]]] = defaultdict(
        lambda: defaultdict(list))
    for _replica, trace in sorted(traces.items()):
        for e in trace.execs:
            if kept.abandoned_by(e.seq, e.epoch) is not None:
                continue  # never committed: no promise was made about it
            by_seq[e.seq].append(e)
            if e.executed:
                by_request[e.request][e.seq].append(e)
    divergence: list[Problem] = []
    for seq in sorted(by_seq):
        records = by_seq[seq]
        first = records[0]
        other = next((r for r in records if r.request != first.request), None)
        if other is not None:
            divergence.append(Problem(
                "divergence", f"seq {seq}: {first.replica} executed {first.show()} but "
                f"{other.replica} executed {other.show()}"))
    # Which process of its replica's log each record came from, named when there are several.
    runs = {r: sorted({e.incarnation for e in t.execs}) for r, t in traces.items()}

    def who(e: Exec) -> str:
        mine = runs[e.replica]
        return f"{e.replica} (process {mine.index(e.incarnation) + 1})" if len(mine) > 1 \
            else e.replica

    # One request at two seqs: executed twice when one process executed it at both, or the
    # replicas agree at both (the history holds it twice); otherwise the replicas disagree
    # where it went (a reordering): divergence.
    twice: list[tuple[int, Problem]] = []
    moved: list[tuple[int, Problem]] = []
    for request, at in by_request.items():
        if len(at) < 2:
            continue
        where = "; ".join(f"seq {s} by {', '.join(sorted({who(e) for e in execs}))}"
                          for s, execs in sorted(at.items()))
        shown = f"<{request[0]}, {request[1]}>"
        processes: dict[tuple[str, int], set[int]] = defaultdict(set)
        for s, execs in at.items():
            for e in execs:
                processes[(e.replica, e.incarnation)].add(s)
        agreed = [s for s in at if all(r.request == request for r in by_seq[s])]
        if any(len(seqs) > 1 for seqs in processes.values()) or len(agreed) > 1:
            twice.append((min(at), Problem("executed twice", f"{shown} executed at {where}")))
        else:
            moved.append((min(at), Problem(
                "divergence", f"{shown} executed at different seqs: {where}")))
    twice.sort(key=lambda item: item[0])
    moved.sort(key=lambda item: item[0])
    return (divergence[:LIMIT] + [p for _, p in moved[:LIMIT]] + [p for _, p in twice[:LIMIT]]
            + backward[:LIMIT])


def check_acknowledged(ops: list[Op], traces: dict[str, ReplicaTrace],
                       takeovers: list[Takeover]) -> list[Problem]:
    """Every acknowledged write is in the history where its acknowledgement put it."""
    kept = Kept(takeovers)
    held: dict[int, set[tuple[str, int]]] = defaultdict(set)
    for trace in traces.values():
        for e in trace.execs:
            if kept.abandoned_by(e.seq, e.epoch) is None:
                held[e.seq].add(e.request)
    problems = []
    for op in ops:
        if op.outcome != "ok" or op.f == "get" or not op.seq or op.epoch is None:
            continue
        what = (f"{op.process} request {op.request_num} acknowledged by {op.replica} as seq "
                f"{op.seq} of epoch {op.epoch}")
        lost_to = kept.abandoned_by(op.seq, op.epoch)
        if lost_to is not None:
            problems.append(Problem(
                "acknowledged lost", f"{what}, but epoch {lost_to.epoch} ({lost_to.replica}) "
                f"took over at seq {lost_to.seq} without it", [op]))
        elif op.request_num is not None and held.get(op.seq) \
                and (op.process, op.request_num) not in held[op.seq]:
            there = ", ".join(f"<{c}, {r}>" for c, r in sorted(held[op.seq]))
            problems.append(Problem("acknowledged lost",
                                    f"{what}, but the history holds {there} there", [op]))
    return problems[:LIMIT]


def check_epochs(takeovers: list[Takeover], ops: list[Op],
                 statuses: dict[str, dict[str, Any] | None] | None = None) -> list[Problem]:
    """One takeover per epoch; nothing acknowledged by a primary after it was deposed: seen in
    its own final status (it still ordered an old epoch and committed past the next epoch's
    takeover) or by a client (an entry the next epoch abandoned, acknowledged in an old epoch
    to a request sent after a newer epoch had acknowledged)."""
    problems = []
    by_epoch: dict[int, set[str]] = defaultdict(set)
    for t in takeovers:
        by_epoch[t.epoch].add(t.replica)
    for epoch, who in sorted(by_epoch.items()):
        if len(who) > 1:
            problems.append(Problem("split brain",
                                    f"epoch {epoch} taken over by {', '.join(sorted(who))}"))
    kept = Kept(takeovers)
    for rid, s in sorted((statuses or {}).items()):
        if not s or s.get("role") not in ORDERER_ROLES:
            continue
        commit, epoch = s.get("commit"), s.get("epoch")
        if not isinstance(commit, int) or not isinstance(epoch, int):
            continue
        t = kept.abandoned_by(commit, epoch)
        if t is not None:
            problems.append(Problem(
                "acknowledged after deposed",
                f"{rid} still ordered epoch {epoch} at the end and had committed up to seq "
                f"{commit}, beyond seq {t.seq} where epoch {t.epoch} ({t.replica}) took over"))
    acked = sorted((o for o in ops if o.outcome == "ok" and o.epoch is not None),
                   key=lambda o: o.complete)
    completes = [o.complete for o in acked]
    newest: list[int] = []  # newest epoch acknowledged by each completion time
    top = 0
    for o in acked:
        top = max(top, o.epoch or 0)
        newest.append(top)
    for op in acked:
        if not op.seq or op.epoch is None:
            continue
        t = kept.abandoned_by(op.seq, op.epoch)
        if t is None:
            continue
        before = bisect.bisect_left(completes, op.invoke)
        if before and newest[before - 1] > op.epoch:
            problems.append(Problem(
                "acknowledged after deposed",
                f"{op.replica} acknowledged seq {op.seq} in epoch {op.epoch} to a request sent "
                f"after epoch {newest[before - 1]} had acknowledged; epoch {t.epoch} took over "
                f"at seq {t.seq}", [op]))
    return problems[:LIMIT]


def check_logs_complete(traces: dict[str, ReplicaTrace]) -> list[Problem]:
    """Executions and acknowledgements are judged from the replicas' logs: a log missing lines
    of the run (say, its journal rotated) makes them unknowable, and is a problem itself."""
    return [Problem("log incomplete", f"{replica}'s log is missing lines of the run "
                                      f"({trace.incomplete}); its executions cannot be judged")
            for replica, trace in sorted(traces.items()) if trace.incomplete]


def check_divergence_log(traces: dict[str, ReplicaTrace]) -> list[Problem]:
    """A replica whose digest differed from the primary's checkpoint says so; the checkpoint
    then replaces its state, so this line may be the only trace of the divergence."""
    problems = [Problem("divergence", f"{replica} reported DIVERGENCE at seq {seq} ({said})")
                for replica, trace in sorted(traces.items()) for seq, said in trace.divergences]
    return problems[:LIMIT]


def check_counters(ops: list[Op], final: dict[str, Any]) -> list[Problem]:
    acked: dict[str, int] = defaultdict(int)
    attempted: dict[str, int] = defaultdict(int)
    for op in ops:
        if op.f != "incr":
            continue
        delta = op.args.get("delta", 1)
        if op.outcome == "ok":
            acked[op.key] += delta
            attempted[op.key] += delta
        elif op.outcome == "info":
            attempted[op.key] += delta
    problems = []
    for key in sorted(attempted):
        value = final.get(key) or 0
        if not acked[key] <= value <= attempted[key]:
            kind = "acknowledged lost" if value < acked[key] else "executed twice"
            problems.append(Problem(kind, f"counter {key}: {acked[key]} acknowledged, "
                                          f"{attempted[key]} attempted, final value {value}"))
    return problems


def check_digests(statuses: dict[str, dict[str, Any] | None]) -> list[Problem]:
    ready = {r: s for r, s in statuses.items() if s and s.get("i_am_ready")}
    by_seq: dict[int, dict[str, str]] = defaultdict(dict)
    for replica, s in ready.items():
        by_seq[s["seq"]][replica] = s.get("digest", "")
    problems = []
    for seq, digests in by_seq.items():
        if len(set(digests.values())) > 1:
            shown = ", ".join(f"{r} {d[:12]}" for r, d in sorted(digests.items()))
            problems.append(Problem("divergence", f"digests differ at seq {seq}: {shown}"))
    if len(by_seq) > 1:
        problems.append(Problem("divergence", "ready replicas did not converge to one seq: "
                                + ", ".join(f"{r} {s['seq']}" for r, s in sorted(ready.items()))))
    return problems


def excuse_forced_loss(ops: list[Op], takeovers: list[Takeover],
                       overrides: list[dict[str, Any]]) -> tuple[list[Op], list[Op]]:
    """The history as the checks judge it after operator overrides, and the operations excused.

    An override (``force_primary`` with accepted data loss) names the old primary, its epoch,
    when its backups were stopped and when it was killed, and the forced replica and epoch. An
    operation is excused only when all of these hold: acknowledged by that old primary in that
    epoch, completed between the stop of its backups and its kill, and at a seq beyond the one
    the forced epoch took over at (its takeover line), so the forced replica never held it:
    the old primary acknowledged it alone, after its backups were dropped. Such an operation
    becomes an unknown outcome (it may be lost, or its effect seen by reads acknowledged
    alone); everything acknowledged before the backups were dropped is still required. An
    override whose forced takeover is not in the logs excuses nothing."""
    rules = []
    for o in overrides:
        t = next((t for t in takeovers if t.epoch == o.get("forced_epoch")
                  and t.replica == o.get("forced")), None)
        if t is None or o.get("killed_at") is None or o.get("stopped_at") is None:
            continue
        rules.append((o["old_primary"], o["old_epoch"], t.seq, float(o["stopped_at"]),
                      float(o["killed_at"]) + KILL_SLACK))
    if not rules:
        return ops, []
    judged: list[Op] = []
    excused: list[Op] = []
    for op in ops:
        if op.outcome == "ok" and op.seq and any(
                op.replica == primary and op.epoch == epoch and op.seq > floor
                and stopped <= op.complete <= killed
                for primary, epoch, floor, stopped, killed in rules):
            excused.append(op)
            op = dataclasses.replace(op, outcome="info", complete=math.inf, result=None)
        judged.append(op)
    return judged, excused


def check_hostile(ops: list[Op], excused: list[Op]) -> list[Problem]:
    """Every hostile request refused: an acknowledged one is a problem. The one exception is a
    reused request_num whose original an operator override lost (``excused``): the number was
    free again, so executing the new operation was right."""
    lost = {(o.process, o.request_num) for o in excused}
    problems = []
    for op in ops:
        if not op.hostile or op.outcome != "ok":
            continue
        if op.hostile == "reused_request_num" and (op.process, op.reuses) in lost:
            continue
        problems.append(Problem("hostile accepted",
                                f"{op.hostile} request acknowledged: {op.describe()}", [op]))
    return problems[:LIMIT]
