"""Per-key linearizability of key-value operations: the Wing & Gong search with Lowe's cache.

The operations on one key are checked against a sequential register that also understands
``incr``, ``cas`` and ``delete``, exactly as the replicas' state machine executes them. The
search walks the history in real-time order, tentatively linearizing any call whose effect is
consistent with the current state, backtracking at the first return whose call was not yet
linearized; (linearized set, state) pairs already explored are cached, which keeps histories of
a few thousand operations per key tractable. Operations whose outcome is unknown have their
return at infinity: they may take effect at any point after invocation, or never.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .history import Op

MISSING = None


def _same(a: Any, b: Any) -> bool:
    """Equality as the state machine's cas sees it (1 and True differ)."""
    return a == b and type(a) is type(b)


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """Is ``op`` with its observed result possible from ``state``; and the state after it."""
    res = op.result
    f = op.f
    if f == "get":
        return (res is None or _same(res.get("value"), state)), state
    if f == "put":
        return True, op.args.get("value")
    if f == "delete":
        return (res is None or res.get("value") == (state is not MISSING)), MISSING
    if f == "incr":
        if state is not MISSING and (isinstance(state, bool) or not isinstance(state, int)):
            return False, state  # an incr that succeeded needs an integer there
        new = (state or 0) + op.args.get("delta", 1)
        return (res is None or _same(res.get("value"), new)), new
    if f == "cas":
        swapped = _same(state, op.args.get("expect"))
        new = op.args.get("value") if swapped else state
        if res is None:
            return True, new
        return (bool(res.get("swapped")) == swapped and _same(res.get("value"), new)), new
    raise ValueError(f"unknown operation {f!r}")


def _freeze(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    return (type(value).__name__, value)


@dataclass
class Verdict:
    key: str
    ok: bool
    ops: int
    explanation: str = ""
    involved: list[Op] = field(default_factory=list)
    explored: int = 0


def check_key(key: str, ops: list[Op], initial: Any = MISSING,
              budget: int = 5_000_000) -> Verdict:
    """Linearizability of the definite and unknown-outcome operations on one key."""
    ops = [o for o in ops if o.outcome != "fail"]
    n = len(ops)
    if n == 0:
        return Verdict(key, True, 0)
    # Events in real time; at equal times a return precedes a call (they did not overlap).
    events = sorted(
        [(o.invoke, 1, i) for i, o in enumerate(ops)]
        + [(o.complete, 0, i) for i, o in enumerate(ops)],
        key=lambda e: (e[0], e[1]))
    size = len(events)
    is_call = [e[1] == 1 for e in events]
    op_of = [e[2] for e in events]
    match = [0] * size
    where_call = {}
    for pos, (_, kind, i) in enumerate(events):
        if kind == 1:
            where_call[i] = pos
    for pos, (_, kind, i) in enumerate(events):
        if kind == 0:
            match[where_call[i]] = pos
    # Doubly linked list over the events, in order, with a head sentinel at index ``size``
    # and -1 for "no next event".
    nxt = [*range(1, size), -1, 0]
    prv = [size, *range(0, size - 1), size - 1]

    def lift(pos: int) -> None:
        for p in (pos, match[pos]):
            a, b = prv[p], nxt[p]
            nxt[a] = b
            if b != -1:
                prv[b] = a

    def unlift(pos: int) -> None:
        for p in (match[pos], pos):
            a, b = prv[p], nxt[p]
            nxt[a] = p
            if b != -1:
                prv[b] = p

    state = initial
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[int, Any]] = []
    entry = nxt[size]
    explored = 0
    deepest = 0
    stuck_at = -1
    while nxt[size] != -1:
        explored += 1
        if explored > budget:
            return Verdict(key, False, n, f"undecided after {budget} steps (history too "
                           "concurrent to search); treat as a failure to investigate",
                           explored=explored)
        if is_call[entry]:
            op = ops[op_of[entry]]
            ok, new_state = step(state, op)
            if ok:
                bit = 1 << op_of[entry]
                memo = (linearized | bit, _freeze(new_state))
                if memo not in cache:
                    cache.add(memo)
                    calls.append((entry, state))
                    state = new_state
                    linearized |= bit
                    lift(entry)
                    if len(calls) > deepest:
                        deepest = len(calls)
                    entry = nxt[size]
                    continue
            entry = nxt[entry]
        else:
            if len(calls) >= deepest:
                stuck_at = entry
            if not calls:
                return _counterexample(key, ops, op_of, stuck_at, state, explored)
            entry, state = calls.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]
    return Verdict(key, True, n, explored=explored)


def _counterexample(key: str, ops: list[Op], op_of: list[int], stuck_at: int, state: Any,
                    explored: int) -> Verdict:
    blocked = ops[op_of[stuck_at]] if stuck_at >= 0 else None
    if blocked is None:
        return Verdict(key, False, len(ops), "no linearization exists", explored=explored)
    concurrent = [o for o in ops if o is not blocked and o.invoke < blocked.complete
                  and o.complete > blocked.invoke]
    before = [o for o in ops if o.complete < blocked.invoke]
    last_writes = [o for o in sorted(before, key=lambda o: o.complete)
                   if o.f in ("put", "cas", "incr", "delete") and o.outcome == "ok"][-3:]
    text = (f"key {key!r}: {blocked.describe()} cannot be placed: no order of the "
            f"{len(concurrent)} operations concurrent with it, after everything that completed "
            f"before it, explains its result")
    return Verdict(key, False, len(ops), text, [*last_writes, blocked, *concurrent[:6]],
                   explored)


KNOWN = ("get", "put", "delete", "incr", "cas")


def check(ops: list[Op]) -> list[Verdict]:
    """Every key's verdict. Refused operations had no effect, and an unknown operation is
    refused before it is ordered (unless acknowledged, which the hostile check reports): only
    the keys something may have changed or read are judged."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.outcome == "fail" or op.f not in KNOWN:
            continue
        by_key.setdefault(op.key, []).append(op)
    return [check_key(k, v) for k, v in sorted(by_key.items())]

