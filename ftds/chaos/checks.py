"""The checks beyond linearizability: counters, executions, epochs, digests.

- **counters**: per counter, acknowledged increments <= final value <= attempted increments;
- **executions** (from the replicas' ``EXEC``/``RESET`` lines): the history every replica
  kept agrees at every sequence number (no divergence, no reordering), and no request appears at
  two sequence numbers (nothing executed twice);
- **epochs**: at most one replica took over each epoch, and no acknowledgement of an epoch's
  entry lies beyond the sequence number at which the next epoch's primary took over (a deposed
  primary acknowledged nothing new);
- **digests**: the ready replicas' state digests are equal at the end.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .history import Op

EXEC_RE = re.compile(r"EXEC (S\d+) seq=(\d+) e=(\d+) <([^,]+), (\d+)>( duplicate)?")
RESET_RE = re.compile(r"RESET (S\d+) seq=(\d+)")
START_RE = re.compile(r"(S\d+): serving clients on")
TAKEOVER_RE = re.compile(r"(S\d+): I am the (?:primary|sequencer) of epoch (\d+) \(seq (\d+)")


@dataclass
class Problem:
    check: str
    text: str
    ops: list[Op] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "text": self.text,
                "ops": [o.describe() for o in self.ops]}


@dataclass
class ReplicaTrace:
    replica: str
    applied: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # seq -> c, r, e
    executed_twice: list[str] = field(default_factory=list)
    resets: int = 0
    incarnations: int = 0


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
                seq = int(m.group(2))
                trace.applied[seq] = (m.group(4), int(m.group(5)), int(m.group(3)))
                if m.group(6):
                    trace.executed_twice.append(line.strip())
            elif m := RESET_RE.search(line):
                trace.applied.clear()  # the state was replaced: what came before is superseded
                trace.resets += 1
            elif START_RE.search(line):
                trace.applied.clear()  # a new process starts empty
                trace.incarnations += 1
            elif m := TAKEOVER_RE.search(line):
                takeovers.append(Takeover(m.group(1), int(m.group(2)), int(m.group(3))))
    return traces, takeovers


def check_executions(traces: dict[str, ReplicaTrace]) -> list[Problem]:
    problems = []
    union: dict[int, tuple[str, int, int]] = {}
    owner: dict[int, str] = {}
    for replica, trace in sorted(traces.items()):
        for seq, request in trace.applied.items():
            known = union.get(seq)
            if known is None:
                union[seq] = request
                owner[seq] = replica
            elif known[:2] != request[:2]:
                problems.append(Problem(
                    "divergence", f"seq {seq}: {owner[seq]} applied <{known[0]}, {known[1]}> "
                    f"but {replica} applied <{request[0]}, {request[1]}>"))
    seen: dict[tuple[str, int], int] = {}
    for seq in sorted(union):
        request = union[seq][:2]
        if request in seen:
            problems.append(Problem(
                "executed twice", f"<{request[0]}, {request[1]}> executed at seq {seen[request]} "
                f"and again at seq {seq}"))
        else:
            seen[request] = seq
    return problems[:50]


def check_epochs(takeovers: list[Takeover], ops: list[Op]) -> list[Problem]:
    problems = []
    by_epoch: dict[int, set[str]] = defaultdict(set)
    start: dict[int, int] = {}
    for t in takeovers:
        by_epoch[t.epoch].add(t.replica)
        start[t.epoch] = max(start.get(t.epoch, 0), t.seq)
    for epoch, who in sorted(by_epoch.items()):
        if len(who) > 1:
            problems.append(Problem("split brain",
                                    f"epoch {epoch} taken over by {', '.join(sorted(who))}"))
    epochs = sorted(start)
    for op in ops:
        if op.outcome != "ok" or op.epoch is None or not op.seq:
            continue
        later = [e for e in epochs if e > op.epoch]
        if later and op.seq > start[later[0]]:
            problems.append(Problem(
                "acknowledged after deposed",
                f"{op.replica} acknowledged seq {op.seq} in epoch {op.epoch}, but epoch "
                f"{later[0]} took over at seq {start[later[0]]}", [op]))
    return problems[:50]


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
