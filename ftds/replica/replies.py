"""Replies to clients: held until their entry is committed, answered in seq order, and sent as
one ``reply`` frame per connection per turn of the applier.

Every reply that carries the time its request came in is counted into the latency histogram
here, on the way out, so the figure is what a client waited inside this replica.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
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


class Pending:
    """Replies waiting for the commit to reach their entries, given back in seq order.

    New entries come in seq order and queue at the end. A retry of a request still waiting
    comes out of order: it goes to a heap, so each costs O(log n). Sorting the whole queue for
    each made a client with 100,000 requests out hold the applier for seconds."""

    __slots__ = ("_added", "_late", "_queue")

    def __init__(self) -> None:
        self._queue: collections.deque[PendingReply] = collections.deque()
        self._late: list[tuple[int, int, PendingReply]] = []
        self._added = 0  # ties in the heap keep arrival order

    def __len__(self) -> int:
        return len(self._queue) + len(self._late)

    def append(self, reply: PendingReply) -> None:
        if self._queue and self._queue[-1].seq > reply.seq:
            self._added += 1
            heapq.heappush(self._late, (reply.seq, self._added, reply))
        else:
            self._queue.append(reply)

    def due(self, commit: int) -> Iterator[PendingReply]:
        """Take out, in seq order, every reply ``commit`` covers."""
        queue, late = self._queue, self._late
        while True:
            if queue and queue[0].seq <= commit and (not late or queue[0].seq <= late[0][0]):
                yield queue.popleft()
            elif late and late[0][0] <= commit:
                yield heapq.heappop(late)[2]
            else:
                return

    def clear(self) -> None:
        self._queue.clear()
        self._late.clear()


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

    def release(self, pending: Pending, commit: int) -> None:
        """Send every waiting reply that ``commit`` now covers."""
        for reply in pending.due(commit):
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
