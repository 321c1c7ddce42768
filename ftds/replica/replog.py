"""The ordered-entry log a replica keeps since its older retained checkpoint.

Entries carry consecutive sequence numbers; ``entries_after(seq)`` gives what a lagging peer
needs, or None once those entries were truncated (the peer then gets a checkpoint instead).
"""

from __future__ import annotations

from typing import Any

Entry = dict[str, Any]


class ReplicationLog:
    def __init__(self, base: int = 0) -> None:
        self.base = base  # seq of the entry before the first one held
        self.entries: list[Entry] = []

    @property
    def last_seq(self) -> int:
        return self.base + len(self.entries)

    def append(self, entry: Entry) -> None:
        if entry["s"] != self.base + len(self.entries) + 1:
            raise ValueError(f"log gap: entry {entry['s']} after {self.last_seq}")
        self.entries.append(entry)

    def reset(self, base: int) -> None:
        """Forget everything; the next entry is ``base + 1`` (after installing a checkpoint)."""
        self.base = base
        self.entries = []

    def entry(self, seq: int) -> Entry | None:
        index = seq - self.base - 1
        if 0 <= index < len(self.entries):
            return self.entries[index]
        return None

    def entries_after(self, seq: int) -> list[Entry] | None:
        if seq < self.base or seq > self.last_seq:
            return None
        return self.entries[seq - self.base:]

    def truncate(self, upto: int) -> None:
        """Drop entries with seq <= upto (they are covered by a checkpoint)."""
        if upto <= self.base:
            return
        upto = min(upto, self.last_seq)
        del self.entries[: upto - self.base]
        self.base = upto

    def __len__(self) -> int:
        return len(self.entries)
