"""The ordered-entry log a replica keeps since its older retained checkpoint.

Entries carry consecutive sequence numbers; ``entries_after(seq)`` gives what a lagging peer
needs, or None once those entries were truncated (the peer then gets a checkpoint instead).

Truncation only moves the log's start: freeing a checkpoint interval's entries at once (tens
of thousands of dicts) stalled the event loop for ~20 ms at 30k writes/s, every interval.
``release()``, called on the replica's ticker, frees them a slice at a time.
"""

from __future__ import annotations

from typing import Any

Entry = dict[str, Any]

RELEASE_SLICE = 2048  # entries freed per release() at least: about 1.5 ms of deallocation


class ReplicationLog:
    def __init__(self, base: int = 0) -> None:
        self.base = base  # seq of the entry before the first one held
        self._entries: list[Entry] = []
        self._head = 0  # _entries[:_head] are truncated, not yet freed
        self._retired: list[list[Entry]] = []  # whole logs dropped by reset(), not yet freed

    @property
    def last_seq(self) -> int:
        return self.base + len(self._entries) - self._head

    @property
    def unreleased(self) -> int:
        """Entries out of reach that release() has yet to free."""
        return self._head + sum(len(old) for old in self._retired)

    def append(self, entry: Entry) -> None:
        if entry["s"] != self.last_seq + 1:
            raise ValueError(f"log gap: entry {entry['s']} after {self.last_seq}")
        self._entries.append(entry)

    def reset(self, base: int) -> None:
        """Forget everything; the next entry is ``base + 1`` (after installing a checkpoint)."""
        if self._entries:
            self._retired.append(self._entries)
        self.base = base
        self._entries = []
        self._head = 0

    def entry(self, seq: int) -> Entry | None:
        index = seq - self.base - 1
        if 0 <= index < len(self._entries) - self._head:
            return self._entries[self._head + index]
        return None

    def entries_after(self, seq: int) -> list[Entry] | None:
        if seq < self.base or seq > self.last_seq:
            return None
        return self._entries[self._head + seq - self.base:]

    def truncate(self, upto: int) -> None:
        """Put entries with seq <= upto out of reach (a checkpoint covers them)."""
        if upto <= self.base:
            return
        upto = min(upto, self.last_seq)
        self._head += upto - self.base
        self.base = upto

    def release(self) -> None:
        """Free one slice of what truncate() and reset() put out of reach: RELEASE_SLICE
        entries, or an eighth of the backlog when that is more (so it never outgrows us)."""
        budget = max(RELEASE_SLICE, self.unreleased // 8)
        while budget and self._retired:
            old = self._retired[-1]
            n = min(budget, len(old))
            del old[len(old) - n:]  # from the end: no memmove of what is left
            budget -= n
            if not old:
                self._retired.pop()
        if budget and self._head:
            n = min(budget, self._head)
            del self._entries[:n]
            self._head -= n

    def __len__(self) -> int:
        return len(self._entries) - self._head
