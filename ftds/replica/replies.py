"""Replies to clients: held until their entry is committed, answered in seq order, and sent as
one ``reply`` frame per connection per turn of the applier.

Every reply that carries the time its request came in is counted into the latency histogram
here, on the way out, so the figure is what a client waited inside this replica.
"""

from __future__ import annotations

import collections
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..log import msg_id
from ..wire import Conn

log = logging.getLogger("ftds.replica")

# Upper bounds (ns) of the request latency histogram's buckets: from tens of microseconds (a
# reply from the cache) through the ms of a commit round trip to a second; slower is +Inf.
LATENCY_BOUNDS_NS = (50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
                     10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
                     1_000_000_000)


@dataclass(slots=True)
class PendingReply:
    """A reply waiting for its entry (``seq``) to be committed."""

    seq: int
    conn: Conn
    item: dict[str, Any]
    label: str = ""
    received: int = 0  # monotonic ns the request came in (0: not timed)


# Replies in seq order, waiting for the commit to reach them.
Pending = collections.deque[PendingReply]


class Replies:
    """The replies of one replica: what waits for a commit and what leaves this turn.

    ``epoch`` and ``tracing`` are asked at each reply: a view change moves the one and a
    configuration reload may change the other."""

    def __init__(self, sender: str, epoch: Callable[[], int], tracing: Callable[[], bool]) -> None:
        self.sender = sender
        self._epoch = epoch
        self._tracing = tracing
        self._out: dict[Conn, list[dict[str, Any]]] = {}
        self.sent = 0
        # Replies per bucket of LATENCY_BOUNDS_NS (+Inf last) and their total, in integers,
        # so timing a request allocates nothing.
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        self.latency_sum_ns = 0

    def send(self, conn: Conn, item: dict[str, Any], received: int = 0) -> None:
        """Answer now: the reply leaves with this turn's frame to ``conn``."""
        if conn.is_closing():
            return
        if received:  # time it: a clock read, a bisect, two integer additions
            elapsed = time.monotonic_ns() - received
            self.latency_counts[bisect_left(LATENCY_BOUNDS_NS, elapsed)] += 1
            self.latency_sum_ns += elapsed
        item["from"] = self.sender
        item["e"] = self._epoch()
        if self._tracing():
            log.info("Sending %s", msg_id(item["c"], self.sender, item["r"], "reply"),
                     extra={"kind": "reply"})
        out = self._out.get(conn)
        if out is None:
            self._out[conn] = [item]
        else:
            out.append(item)
        self.sent += 1

    def when_committed(self, pending: Pending, commit: int, conn: Conn, client: str,
                       request_num: int, seq: int, result: dict[str, Any],
                       received: int = 0) -> None:
        """Answer entry ``seq`` now if ``commit`` covers it, else once it does."""
        item = {"c": client, "r": request_num, "s": seq, "res": result}
        if seq <= commit:
            self.send(conn, item, received)
            return
        # Answered in seq order once committed; an already-waiting original keeps its place.
        pending.append(PendingReply(seq, conn, item, "", received))
        if len(pending) > 1 and pending[-2].seq > seq:
            ordered = sorted(pending, key=lambda p: p.seq)
            pending.clear()
            pending.extend(ordered)

    def release(self, pending: Pending, commit: int) -> None:
        """Send every waiting reply that ``commit`` now covers."""
        while pending and pending[0].seq <= commit:
            reply = pending.popleft()
            self.send(reply.conn, reply.item, reply.received)

    def flush(self) -> None:
        """One ``reply`` frame to each connection with replies this turn."""
        if not self._out:
            return
        out, self._out = self._out, {}
        for conn, items in out.items():
            conn.send("reply", {"reps": items})

    def latency(self) -> dict[str, Any]:
        """The histogram: bucket bounds and sum in seconds, replies per bucket (the last one
        over every bound)."""
        return {"le": [ns / 1e9 for ns in LATENCY_BOUNDS_NS],
                "counts": list(self.latency_counts),
                "sum": self.latency_sum_ns / 1e9}
