"""Client histories: every operation as invoke then ok / fail / info, as JSON lines.

``ok`` and ``fail`` are definite (``fail``: answered with an error, so it had no effect);
``info`` means the outcome is unknown (the client gave up or the run ended first): the operation
may or may not have taken effect, at any time after its invocation. An invocation may carry
``hostile: KIND`` (a request the replicas must refuse; ``reuses``: the request_num it resent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Op:
    id: int
    process: str
    f: str  # get | put | cas | incr | delete
    key: str
    args: dict[str, Any]
    invoke: float  # seconds, one clock for every process of a run
    complete: float  # math.inf when the outcome is unknown
    outcome: str  # ok | fail | info
    result: dict[str, Any] | None
    replica: str | None = None
    seq: int | None = None
    epoch: int | None = None
    wall: float | None = None  # wall-clock time of the invocation, for timelines
    request_num: int | None = None  # the client's request_num: matches the replicas' EXEC lines
    hostile: str | None = None  # a request that must be refused: which kind
    reuses: int | None = None  # hostile reused_request_num: the request_num it sent again

    @property
    def latency(self) -> float | None:
        return None if math.isinf(self.complete) else self.complete - self.invoke

    def describe(self) -> str:
        args = {k: v for k, v in self.args.items() if k not in ("op", "key")}
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        res = "?" if self.result is None else orjson.dumps(self.result).decode()
        end = "…" if math.isinf(self.complete) else f"{self.complete:.6f}"
        by = f" by {self.replica} seq {self.seq} epoch {self.epoch}" if self.replica else ""
        return (f"#{self.id} {self.process} {self.f}({self.key}{', ' + shown if shown else ''})"
                f" -> {res} [{self.invoke:.6f}, {end}]{by}")


def parse(lines: list[dict[str, Any]]) -> list[Op]:
    """Pair each process's invocation with what followed it (processes are sequential)."""
    ops: list[Op] = []
    pending: dict[str, dict[str, Any]] = {}
    for event in sorted(lines, key=lambda e: e["time"]):
        process = event["process"]
        kind = event["type"]
        if kind == "invoke":
            if process in pending:  # a new invocation: the previous one's fate is unknown
                ops.append(_op(len(ops), pending.pop(process), None))
            pending[process] = event
            continue
        start = pending.pop(process, None)
        if start is not None:
            ops.append(_op(len(ops), start, event))
    for start in pending.values():
        ops.append(_op(len(ops), start, None))
    return ops


def _op(index: int, start: dict[str, Any], end: dict[str, Any] | None) -> Op:
    op = start["op"]
    outcome = end["type"] if end is not None else "info"
    if outcome not in ("ok", "fail", "info"):
        outcome = "info"
    return Op(
        id=index, process=start["process"], f=op["op"], key=op["key"], args=op,
        invoke=start["time"] / 1e9,
        complete=end["time"] / 1e9 if end is not None and outcome != "info" else math.inf,
        outcome=outcome, result=end.get("result") if end is not None and outcome != "info"
        else None,
        replica=end.get("replica") if end else None, seq=end.get("seq") if end else None,
        epoch=end.get("epoch") if end else None, wall=start.get("wall"),
        request_num=end.get("request_num") if end else None, hostile=start.get("hostile"),
        reuses=start.get("reuses"))


def load(paths: list[Path]) -> list[Op]:
    events: list[dict[str, Any]] = []
    for path in paths:
        with open(path, "rb") as fh:
            events.extend(orjson.loads(line) for line in fh if line.strip())
    return parse(events)
