"""Incidents: every fault with the timestamps of its recovery, and the durations between them.

One incident per replica loss: detected (by its LFD, or the GFD when the LFD itself was lost),
removed from the membership, new primary/sequencer (if it was one), relaunch issued, process up
(its LFD saw it again), ready (caught up and admitted: back in the membership clients see).
Closed incidents are appended to ``incidents.jsonl`` in the RM's state directory (one older
generation is kept as ``incidents.jsonl.1`` past MAX_FILE), and the last KEEP of them are kept
in memory: ``ftds incidents`` is answered from there, never by reading the file on the loop.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ftds.rm")

STEPS = ("detected", "removed", "new_primary", "relaunch_issued", "process_up", "ready")
KEEP = 200  # closed incidents ``ftds incidents`` shows
TAIL = 1 << 20  # bytes read from the end of the file at start to find them
MAX_FILE = 8 << 20  # past this the file becomes incidents.jsonl.1 and a new one starts


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
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self._next_id = 1 + self._load_tail()

    def _load_tail(self) -> int:
        """The last KEEP closed incidents from the files' ends; returns the highest id used."""
        last_id = 0
        lines_counted = 0
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                with open(path, "rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, size - TAIL))
                    lines = fh.read().split(b"\n")
            except OSError:
                continue
            if size > TAIL:
                lines = lines[1:]  # the first one is cut
            else:
                lines_counted = sum(1 for line in lines if line.strip())
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self.recent.append(record)
                    if isinstance(record.get("id"), int):
                        last_id = max(last_id, record["id"])
        # Records without ids (an older version's) were numbered by their line in the file.
        return max(last_id, lines_counted)

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
        self.recent.append(incident.to_json())
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
                full = fh.tell() > MAX_FILE
            if full:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except OSError as exc:
            log.warning("RM: cannot record incident in %s: %s", self.path, exc)

    def all(self) -> list[dict[str, Any]]:
        """The last KEEP closed incidents and the open ones, oldest first (from memory)."""
        return [*self.recent, *(i.to_json() for i in self.open.values())]
