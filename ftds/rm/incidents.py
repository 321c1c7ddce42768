"""Incidents: every fault with the timestamps of its recovery, and the durations between them.

One incident per replica loss: detected (by its LFD, or the GFD when the LFD itself was lost),
removed from the membership, new primary/sequencer (if it was one), relaunch issued, process up
(its LFD saw it again), ready (caught up and admitted: back in the membership clients see).
Closed incidents are appended to ``incidents.jsonl`` in the RM's state directory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ftds.rm")

STEPS = ("detected", "removed", "new_primary", "relaunch_issued", "process_up", "ready")


@dataclass
class Incident:
    id: int
    replica: str
    cause: str
    was_primary: bool
    confirmed_dead: bool
    detected: float
    removed: float | None = None
    new_primary: float | None = None
    new_primary_id: str | None = None
    relaunch_issued: float | None = None
    process_up: float | None = None
    ready: float | None = None
    closed: bool = False
    notes: list[str] = field(default_factory=list)

    def durations(self) -> dict[str, float | None]:
        def span(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        return {
            "detect_to_removed_ms": span(self.detected, self.removed),
            "detect_to_new_primary_ms": span(self.detected, self.new_primary),
            "detect_to_relaunch_ms": span(self.detected, self.relaunch_issued),
            "relaunch_to_up_ms": span(self.relaunch_issued, self.process_up),
            "relaunch_to_ready_ms": span(self.relaunch_issued, self.ready),
            "detect_to_ready_ms": span(self.detected, self.ready),
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), **self.durations()}


class IncidentLog:
    def __init__(self, state_dir: str, *,
                 on_open: Callable[[Incident], None] | None = None,
                 on_close: Callable[[Incident], None] | None = None) -> None:
        self.path = Path(state_dir) / "incidents.jsonl"
        self._on_open = on_open
        self._on_close = on_close
        self.open: dict[str, Incident] = {}
        self.closed: list[Incident] = []
        self._next_id = 1 + self._count_existing()

    def _count_existing(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def opened(self, replica: str, cause: str, *, was_primary: bool, confirmed_dead: bool,
               detected: float | None = None) -> Incident:
        current = self.open.get(replica)
        if current is not None:
            return current
        incident = Incident(self._next_id, replica, cause, was_primary, confirmed_dead,
                            detected or time.time())
        self._next_id += 1
        self.open[replica] = incident
        if self._on_open is not None:
            self._on_open(incident)
        return incident

    def mark(self, replica: str, step: str, at: float | None = None, **extra: Any) -> None:
        incident = self.open.get(replica)
        if incident is None or getattr(incident, step) is not None:
            return
        setattr(incident, step, at or time.time())
        for name, value in extra.items():
            setattr(incident, name, value)
        if step == "ready":
            self._close(incident)

    def mark_all(self, step: str, at: float | None = None, **extra: Any) -> None:
        for replica in list(self.open):
            self.mark(replica, step, at, **extra)

    def note(self, replica: str, text: str) -> None:
        incident = self.open.get(replica)
        if incident is not None:
            incident.notes.append(text)

    def _close(self, incident: Incident) -> None:
        incident.closed = True
        self.open.pop(incident.replica, None)
        self.closed = [*self.closed[-199:], incident]
        d = incident.durations()
        log.info("RM: incident %d closed: %s %s; detect->removed %s ms, ->new primary %s ms, "
                 "relaunch->ready %s ms, total %s ms", incident.id, incident.replica,
                 incident.cause, d["detect_to_removed_ms"], d["detect_to_new_primary_ms"],
                 d["relaunch_to_ready_ms"], d["detect_to_ready_ms"], extra={"kind": "decision"})
        if self._on_close is not None:
            self._on_close(incident)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(incident.to_json()) + "\n")
        except OSError as exc:
            log.warning("RM: cannot record incident in %s: %s", self.path, exc)

    def all(self) -> list[dict[str, Any]]:
        history = []
        try:
            with open(self.path) as fh:
                history = [json.loads(line) for line in fh if line.strip()]
        except (OSError, ValueError):
            history = [i.to_json() for i in self.closed]
        return [*history[-200:], *(i.to_json() for i in self.open.values())]
