"""One replica: the state machine, its role in the current view, ordering and catch-up.

Everything that touches the state machine runs in one asyncio task (``_applier``), in the order
events arrived, so application is deterministic and a checkpoint is taken at a quiet point for
free. Protocol callbacks only validate messages and append them to the inbox.

Roles (same code in both modes):
- the **orderer** of an epoch (the primary in passive mode, the sequencer in active mode) gives
  each client request a sequence number, applies it and streams it to every subscribed member;
  a request is *committed* once every ready member has acknowledged it, and only committed
  requests are answered;
- a **member** subscribes to the orderer, applies the stream in order and acknowledges; in active
  mode it also answers clients once the orderer reports the entry committed; in passive mode it
  records client requests so it can order them itself if promoted;
- a **newborn** (``i_am_ready = 0``) records requests, receives a checkpoint, installs it,
  replays what arrived beyond it and is made ready by the Replication Manager.

This class is the shell around the decisions, which are made without I/O elsewhere: the commit,
laggards and vouching by the orderer core (``orderer.Commitment``, fed events through
``_step``); the epoch gate, which views to take and what a view change does next
(``viewchange``); exactly-once, the member's stream and checkpoint verdicts (``member``). Here
are the connections, the state machine and the log, and the carrying out, with the help of
objects with one job each: ``replies.Replies`` (replies held until committed, sent once a
turn), ``fanout.Fanout`` (the orderer's subscribers and the stream to them) and
``checkpoints.Checkpoints`` (taking, sending and receiving checkpoints).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import faults
from ..config import ClusterConfig, ConfigError
from ..log import msg_id
from ..sdnotify import nobody_listens
from ..statemachine import (
    SKIP_REPLY_CACHE,
    StateMachine,
    Sums,
    client_id_problem,
    fingerprint,
    validate_op,
)
from ..supervise import spawn
from ..tls import LinkTls
from ..view import View
from ..wire import (
    MAX_REQUESTS_PER_FRAME,
    Conn,
    Message,
    WireError,
    encode_body,
    envelope,
    require,
)
from .checkpoints import Checkpoints
from .fanout import Fanout, Subscriber
from .member import (
    AtCheckpoint,
    InStream,
    Seen,
    classify_request,
    next_in_stream,
)
from .orderer import (
    ACK_AFTER_DEPOSED,
    DROP_ACKED_WRITE,
    Acked,
    Applied,
    Commitment,
    Committed,
    DropLaggards,
    Event,
    Holds,
    Lease,
    LeftEpoch,
    ReadySet,
    Serving,
    Tick,
    TookEpoch,
)
from .replies import Pending, PendingReply, Replies
from .replog import ReplicationLog
from .transfer import (
    CheckpointParts,
    PartsCollector,
    limit_for,
    pack,
    send_paced,
)
from .upstream import Upstream
from .viewchange import (
    FetchFrom,
    Take,
    WaitForMembers,
    admits,
    catchup_from_log,
    judge_view,
    may_come_due,
    recovery_step,
)

log = logging.getLogger("ftds.replica")
exec_log = logging.getLogger("ftds.exec")

# Requests (or stream entries) the applier handles before the event loop gets a turn (about
# 25 ms of work): a backlog must not keep heartbeats unanswered until the LFD takes the replica
# for hung.
APPLIER_STEP_REQUESTS = MAX_REQUESTS_PER_FRAME
# Client requests waiting for the applier past which no more are read from clients, until it is
# back under one step's worth: the backlog, its memory and its wait stay bounded, and TCP slows
# the clients down.
INBOX_HIGH = 16 * APPLIER_STEP_REQUESTS
# The state's digest is refreshed for what changed since the last one. Past HASH_AHEAD_KEEP
# changed items (of a kind), each tick hashes up to HASH_AHEAD_STEP of them (about 5 ms), so
# a checkpoint after 100,000 sessions each changed their record is not 0.24 s of one turn.
HASH_AHEAD_STEP = 2048
HASH_AHEAD_KEEP = 4096

# Planted bugs (tests of the tests only; see ftds/faults.py).
REORDER = faults.on("reorder")
STALL_APPLIER = faults.on("stall_applier")


@dataclass(slots=True)
class Recorded:
    request_num: int
    op: dict[str, Any]
    conn: Conn
    received: int = 0  # monotonic ns the request came in (0: not timed)


@dataclass
class Stats:
    ordered: int = 0
    duplicates_answered: int = 0
    rejected_frames: int = 0
    started: float = field(default_factory=time.time)


class Replica:
    def __init__(self, config: ClusterConfig, replica_id: str, key: bytes) -> None:
        self.config = config
        self.spec = config.replica(replica_id)
        self.id = replica_id
        self.key = key
        self.tls: LinkTls | None = None  # its TLS identity, when the cluster runs TLS
        # A new one at every process start: views name the incarnations they count, so a
        # restarted (empty) replica is never taken for the one that held the state.
        self.incarnation = os.urandom(6).hex()
        self.sm = StateMachine()
        self.log = ReplicationLog()
        self.checkpoints = Checkpoints(replica_id, self.sm, self.log,
                                       lambda: self.config.trace.executions)
        self.view: View | None = None
        self.trusted = False  # in the ready set of the view (i_am_ready)
        self.caught_up = False  # holds a state from the current orderer's stream
        self.recovering = False  # orderer collecting the epoch's history (view change)
        self.stats = Stats()
        # orderer side: the commit decisions are the orderer core's (no I/O in it)
        self.orderer = Commitment(
            waits_for_members=not (config.replication == "async" and config.mode != "active"))
        self.subs = Fanout(replica_id, key)
        self.replies = Replies(replica_id, lambda: self.epoch,
                               lambda: self.config.trace.requests)
        self.waiting = Pending()
        self._lease_sent: dict[int, float] = {}
        self._lease_n = 0
        self._fetch_from: str | None = None
        self._recovery_deadline = 0.0
        self._entries_out: list[dict[str, Any]] = []
        self._commit_sent = 0
        # What the orderer last vouched for: a view all of whose members hold everything
        # committed when it took that view. Members it adds become electable only then.
        self._vouched: list[int] | None = None
        self._commit_scheduled = False
        # member side
        self.upstream: Upstream | None = None
        self._parts = PartsCollector()  # a checkpoint arriving in parts from the orderer
        self._fetch_parts = PartsCollector()  # one arriving during a view change's fetch
        self.member_commit = 0  # commit index reported by the orderer
        self.member_waiting = Pending()
        # clients
        self.client_links: set[Conn] = set()
        self.recorded: dict[str, Recorded] = {}
        self.recorded_batches: collections.deque[tuple[float, Conn, list[Any]]] = \
            collections.deque()
        self._held: list[tuple[Conn, str, int, Any]] = []  # requests during a view change
        # control
        self.rm_conns: set[Conn] = set()
        self.watchers: set[Conn] = set()
        self._inbox: collections.deque[tuple[Callable[[Conn, Message], None], Conn, Message]] \
            = collections.deque()
        self._queued = 0  # client requests waiting for the applier: in the inbox, or held
        self._clients_paused = False  # reading from clients stopped: the inbox is full
        self._applied_at = time.monotonic()  # when the applier last took its inbox
        self._stall_planted = False
        self._now_s = int(time.time())
        self._clock_seen = (0, 0.0)  # the state's clock, and when this replica first saw it
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_report = 0.0
        # Told at each role, view or readiness change (systemd's STATUS=, see status_line).
        self.status_changed: Callable[[], None] = nobody_listens

    # ===================================================================== properties ====
    @property
    def tunables(self):
        return self.config.tunables

    @property
    def epoch(self) -> int:
        return self.view.epoch if self.view else 0

    @property
    def is_orderer(self) -> bool:
        return self.view is not None and self.view.primary == self.id

    @property
    def serving(self) -> bool:
        return self.is_orderer and not self.recovering

    @property
    def ready(self) -> bool:
        """The course's i_am_ready."""
        return self.serving or (self.trusted and self.caught_up and not self.is_orderer)

    @property
    def active(self) -> bool:
        return self.config.mode == "active"

    @property
    def role_name(self) -> str:
        if self.is_orderer:
            return "sequencer" if self.active else "primary"
        return "replica" if self.active else "backup"

    @property
    def sync_set(self) -> list[str]:
        if self.view is None:
            return []
        return [m for m in self.view.members if m != self.id]

    @property
    def commit(self) -> int:
        """The orderer's commit index: every member of the ready set holds it."""
        return self.orderer.commit

    @property
    def acked(self) -> dict[str, int]:
        return self.orderer.acked

    @property
    def lease_until(self) -> float:
        return self.orderer.lease_until

    def lease_ok(self) -> bool:
        return self.orderer.lease_ok(time.monotonic())

    # ====================================================================== lifecycle ====
    def start(self) -> None:
        self._tasks = [
            spawn(self._applier(), "applier"),
            spawn(self._ticker(), "ticker"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upstream:
            self.upstream.close()
        for conn in list(self.client_links):
            conn.close()

    def submit(self, handler: Callable[[Conn, Message], None], conn: Conn, msg: Message) -> None:
        """Queue an event for the applier task (keeps arrival order)."""
        if not self._inbox:
            self._applied_at = time.monotonic()  # the wait for the applier starts now
        self._inbox.append((handler, conn, msg))
        self._wake.set()

    def applier_stalled(self) -> bool:
        """Work has waited a whole detection window (heartbeat interval x misses) without the
        applier taking any: the LFD counts such a heartbeat as missed (a stalled primary is a
        hung one). A busy loop is not a stalled applier: with 30,000 requests arriving at once,
        reading them between two steps took over one interval on this 2-core machine, and a
        member was taken for hung while its applier was working them off."""
        t = self.tunables
        return bool(self._inbox) and \
            time.monotonic() - self._applied_at > t.heartbeat_interval * t.heartbeat_misses

    async def _applier(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                self._applied_at = time.monotonic()
                self._now_s = self._entry_time(self._applied_at)
                self._take(APPLIER_STEP_REQUESTS)
                self._ship()
                self._resume_if_drained()
                if STALL_APPLIER and self._stall_planted:
                    log.critical("%s: PLANTED BUG: the applier stops taking work", self.id)
                    await asyncio.Event().wait()
                if self._inbox:
                    # The loop's turn: heartbeats, acknowledgements and views are not kept
                    # waiting behind a backlog of client requests.
                    await asyncio.sleep(0)

    def _take(self, budget: int) -> None:
        """Handle events in arrival order until ``budget`` requests' worth is done."""
        inbox = self._inbox
        while inbox and budget > 0:
            handler, conn, msg = inbox.popleft()
            requests = len(msg.get("reqs", ()))
            self._queued -= requests
            budget -= requests or len(msg.get("entries") or ()) or 1
            if conn.is_closing() and handler is not self._on_view:
                continue
            try:
                began = time.perf_counter()
                handler(conn, msg)
                took = time.perf_counter() - began
                if took > self.tunables.heartbeat_interval:
                    # Heartbeats waited that long: say what held the loop, should the LFD
                    # have taken this replica for hung meanwhile.
                    what = handler.__name__.lstrip("_")
                    if isinstance(msg.get("t"), str):
                        what += f" {msg['t']}"
                    log.warning("%s: one step (%s) held the loop for %.0f ms", self.id, what,
                                took * 1000)
            except WireError as exc:
                self.stats.rejected_frames += 1
                conn.reject(exc.code, exc.detail)

    def _entry_time(self, mono: float) -> int:
        """The orderer's clock, carried by each entry: the reply cache's TTL is measured by it,
        the same on every replica. Its wall clock, but never behind the last entry applied,
        nor ahead of it by more than the time that really passed since: a new primary whose
        clock ran an hour fast would otherwise prune every client's record at its first sweep,
        and a retry of a request its predecessor applied would run again."""
        now, last = int(time.time()), self.sm.clock
        if not last:
            return now
        if self._clock_seen[0] != last:
            self._clock_seen = (last, mono)
        return max(last, min(now, last + int(mono - self._clock_seen[1]) + 1))

    async def _ticker(self) -> None:
        """Checkpoints, lease renewal, recovery deadlines and reports, on their own clocks."""
        next_checkpoint = time.monotonic() + self.tunables.checkpoint_interval
        next_lease = 0.0
        while True:
            await asyncio.sleep(min(0.02, self.tunables.heartbeat_interval / 2))
            now = time.monotonic()
            if self.serving and now >= next_checkpoint:
                next_checkpoint = now + self.tunables.checkpoint_interval
                if self.checkpoints.due():
                    self.submit(self._send_checkpoint, _NO_CONN, {})
            if self.is_orderer and now >= next_lease:
                next_lease = now + self.tunables.lease / 4
                self._request_lease()
            if self.recovering and self._recovery_deadline and now > self._recovery_deadline:
                self._recovery_deadline = now + self.tunables.view_change_timeout
                missing = [m for m in self.sync_set if m not in self.subs]
                if missing:
                    log.warning("%s: view change waits for %s; asking the RM to drop them",
                                self.id, ", ".join(missing))
                    self._to_rm("lagging", {"members": missing, "reason": "no subscription"})
            if self.recorded_batches:
                self._prune_recorded_batches()
            if self.log.unreleased:
                self.log.release()  # truncated entries, a slice per tick: no pause
            self.sm.hash_ahead(HASH_AHEAD_STEP, HASH_AHEAD_KEEP)
            if now - self._last_report >= max(self.tunables.heartbeat_interval, 0.05):
                self.report()
            if self.serving:  # a lease-bound commit when alone; laggards otherwise
                tun = self.tunables
                self._step(Tick(self.sm.seq, tun.heartbeat_interval * tun.heartbeat_misses
                                + 0.2), now)

    # ======================================================================== clients ====
    def on_client_hello(self, conn: Conn, msg: Message) -> None:
        client = require(msg, "client", str)
        if (problem := client_id_problem(client)) is not None:
            raise WireError("malformed", f"hello: {problem}")
        conn.peer_id = client
        self.client_links.add(conn)
        if self._clients_paused:
            conn.pause_reading()
        conn.send("welcome", {"replica": self.id, "mode": self.config.mode,
                              "view": self.view.to_wire() if self.view else None,
                              "ready": self.ready, "watermark": self.sm.watermark(client)})

    def on_client_requests(self, conn: Conn, msg: Message) -> None:
        reqs = require(msg, "reqs", list)
        if len(reqs) > MAX_REQUESTS_PER_FRAME:
            raise WireError("malformed", f"req: at most {MAX_REQUESTS_PER_FRAME} requests a frame "
                                         f"(got {len(reqs)})")
        parsed = []
        for item in reqs:
            if not isinstance(item, dict):
                raise WireError("malformed", "req: each request must be an object")
            client = item.get("c")
            request_num = item.get("r")
            if (problem := client_id_problem(client)) is not None:
                raise WireError("malformed", f"req: {problem} ('c')")
            if isinstance(request_num, bool) or not isinstance(request_num, int) \
                    or request_num < 1:
                raise WireError("malformed", "req: request_num 'r' must be a positive integer")
            attempt = item.get("a", 1)
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
                raise WireError("malformed", "req: attempt 'a' must be a positive integer")
            parsed.append((client, request_num, item.get("op"), attempt))
        if self.passive_backup and not self.config.trace.requests:
            # A ready passive backup only keeps requests in case it is promoted: keep the
            # batch as it came and look inside only then (checkpoints prune what is old).
            self.recorded_batches.append((time.monotonic(), conn, parsed))
            return
        self.submit(self._handle_requests, conn, {"reqs": parsed, "at": time.monotonic_ns()})
        self._queue(len(parsed))

    def _queue(self, requests: int) -> None:
        """``requests`` more wait for the applier: past INBOX_HIGH, stop reading clients."""
        self._queued += requests
        if self._queued > INBOX_HIGH and not self._clients_paused:
            self._pace_clients(True)

    def _resume_if_drained(self) -> None:
        if self._clients_paused and self._queued <= APPLIER_STEP_REQUESTS:
            self._pace_clients(False)

    def _pace_clients(self, pause: bool) -> None:
        """Stop (or resume) reading from every client while the inbox is over INBOX_HIGH."""
        self._clients_paused = pause
        log.info("%s: %s reading from clients (%d requests wait for the applier)", self.id,
                 "pausing" if pause else "resuming", self._queued)
        for conn in self.client_links:
            if pause:
                conn.pause_reading()
            else:
                conn.resume_reading()

    @property
    def passive_backup(self) -> bool:
        return not self.active and self.ready and not self.is_orderer

    def _expand_recorded_batches(self) -> None:
        """Turn the batches a passive backup kept into recorded requests (on promotion)."""
        batches, self.recorded_batches = self.recorded_batches, collections.deque()
        for _at, conn, parsed in batches:
            if conn.is_closing():
                continue
            for client, request_num, op, _attempt in parsed:
                if request_num > self.sm.watermark(client) and validate_op(op) is None:
                    known = self.recorded.get(client)
                    if known is None or known.request_num < request_num:
                        self.recorded[client] = Recorded(request_num, op, conn)

    def _prune_recorded_batches(self) -> None:
        keep = max(2 * self.tunables.checkpoint_interval, 2.0)
        horizon = time.monotonic() - keep
        batches = self.recorded_batches
        while batches and batches[0][0] < horizon:
            batches.popleft()

    def _handle_requests(self, conn: Conn, msg: Message) -> None:
        trace = self.config.trace.requests
        received = msg.get("at", 0)
        for client, request_num, op, attempt in msg["reqs"]:
            if trace:
                log.info("Received %s", msg_id(client, self.id, request_num, "request"),
                         extra={"kind": "received"})
            if self.serving:
                self._order(conn, client, request_num, op, received)
            elif self.is_orderer:
                # The view change is collecting the epoch's history: hold the request (a
                # retry of an applied one included) and order or answer it once it is done.
                self._hold(conn, client, request_num, op)
            else:
                self._record(conn, client, request_num, op, attempt, received)

    def _hold(self, conn: Conn, client: str, request_num: int, op: Any) -> None:
        """Keep a request until the view change is done. It still waits for the applier, so
        it counts towards a full inbox."""
        self._held.append((conn, client, request_num, op))
        self._queue(1)

    def _record(self, conn: Conn, client: str, request_num: int, op: Any, attempt: int,
                received: int = 0) -> None:
        watermark = self.sm.watermark(client)
        seen = classify_request(request_num, watermark,
                                request_num == watermark and self.sm.same_op(client, op))
        if seen is Seen.NEW:
            if validate_op(op) is not None:
                return  # the orderer answers the error; nothing worth keeping
            self.recorded[client] = Recorded(request_num, op, conn, received)
            if not self.ready and self.config.trace.requests:
                log.info("Recorded %s (i_am_ready = 0, high_watermark_request_num = %d)",
                         msg_id(client, self.id, request_num, "request"), request_num,
                         extra={"kind": "state"})
        elif seen is Seen.RETRY and attempt > 1 and self.active and self.ready:
            cached = self.sm.cached(client, request_num)
            if cached is not None:
                result, seq = cached
                self.replies.when_committed(self.member_waiting, self.member_commit,
                                           conn, client, request_num, seq, result, received)

    def _order(self, conn: Conn, client: str, request_num: int, op: Any,
               received: int = 0) -> None:
        watermark = self.sm.watermark(client)
        seen = classify_request(request_num, watermark,
                                request_num == watermark and self.sm.same_op(client, op))
        if SKIP_REPLY_CACHE and seen is not Seen.STALE:
            seen = Seen.NEW  # planted bug: the reply cache is not consulted
        if seen is Seen.STALE:
            # A restarted client reusing its id: tell it where its numbering stands.
            self.replies.send(conn, {"c": client, "r": request_num, "s": 0,
                                     "watermark": watermark,
                                     "res": {"ok": False, "stale": True,
                                             "error": f"stale request_num (last {watermark})"}},
                              received)
            return
        if seen is not Seen.NEW:
            if seen is Seen.REUSED:
                # The same (client, request_num) with another operation: a reused client id,
                # never a retry. Tell it where its numbering stands; never the other reply.
                self.replies.send(conn, {"c": client, "r": request_num, "s": 0,
                                         "watermark": watermark,
                                         "res": {"ok": False, "stale": True,
                                                 "error": f"request_num {request_num} was "
                                                          "already used for another operation"}},
                                  received)
                return
            cached = self.sm.cached(client, request_num)
            if cached is not None:
                result, seq = cached
                self.stats.duplicates_answered += 1
                self.replies.when_committed(self.waiting, self.commit, conn, client,
                                           request_num, seq, result, received)
            return
        problem = validate_op(op)
        if problem is not None:
            self.replies.send(conn, {"c": client, "r": request_num, "s": 0,
                                     "res": {"ok": False, "error": problem}}, received)
            return
        self.recorded.pop(client, None)
        entry = {"s": self.sm.seq + 1, "e": self.epoch, "c": client, "r": request_num, "op": op,
                 "t": self._now_s}
        result = self._apply(entry, announce=True)
        if STALL_APPLIER and op.get("key") == "__stall__":
            self._stall_planted = True  # planted bug: this orderer's applier stops after this
        self._entries_out.append(entry)
        self.stats.ordered += 1
        self.waiting.append(PendingReply(entry["s"], conn, {
            "c": client, "r": request_num, "s": entry["s"], "res": result}, "", received))

    def _apply(self, entry: dict[str, Any], *, announce: bool) -> dict[str, Any]:
        """Apply one entry to the state machine and the log, with the course's lines."""
        trace = announce and self.config.trace.requests
        client, request_num = entry["c"], entry["r"]
        if trace:
            key = entry["op"].get("key", "")
            label = msg_id(client, self.id, request_num, "request")
            log.info("my_state_%s = %s before processing %s", self.id, self.sm.describe(key),
                     label, extra={"kind": "state"})
        result, executed = self.sm.apply(entry)
        self.log.append(entry)
        if self.config.trace.executions:
            exec_log.info("EXEC %s seq=%d e=%d <%s, %d>%s", self.id, entry["s"], entry["e"],
                          client, request_num, "" if executed else " duplicate-not-executed")
        if trace:
            log.info("my_state_%s = %s after processing %s", self.id, self.sm.describe(key),
                     label, extra={"kind": "state"})
        recorded = self.recorded.get(client)
        if recorded is not None and recorded.request_num <= request_num:
            del self.recorded[client]
        return result

    def on_client_closed(self, conn: Conn) -> None:
        self.client_links.discard(conn)

    def push_view_to_clients(self) -> None:
        if self.view is None:
            return
        body = {"view": self.view.to_wire(), "ready": self.ready}
        for conn in list(self.client_links):
            conn.send("view", body)

    # ==================================================================== orderer side ====
    def _ship(self) -> None:
        """After a batch of events: stream new entries, advance the commit, send replies."""
        if self._entries_out:
            entries, self._entries_out = self._entries_out, []
            fields = {"entries": entries, "commit": self.commit}
            if DROP_ACKED_WRITE:
                asyncio.get_running_loop().call_later(0.5, self._broadcast, "entries", fields)
            else:
                self.subs.broadcast(self._entries_bodies(entries))
            self._commit_sent = self.commit
        self._advance_commit()
        self.replies.flush()

    def _broadcast(self, kind: str, fields: dict[str, Any]) -> list[str]:
        return self.subs.broadcast([self._body(kind, fields)])

    def _body(self, kind: str, fields: dict[str, Any]) -> bytes:
        return encode_body(envelope(kind, self.id, self.epoch, fields))

    def _entries_bodies(self, entries: list[dict[str, Any]]) -> list[bytes]:
        """``entries`` messages for a run of the log, in slices that fit a frame, of one
        applier step at most: a member applies a message in one step (a catch-up's tail of
        10,000 entries in one message held a member's loop for 160 ms)."""
        commit = self.commit

        def encode(part: list[dict[str, Any]]) -> bytes:
            return self._body("entries", {"entries": part, "commit": commit})

        return [body for i in range(0, len(entries), APPLIER_STEP_REQUESTS)
                for body in pack(entries[i:i + APPLIER_STEP_REQUESTS], encode, self._limit)]

    @property
    def _limit(self) -> int:
        return limit_for(self.tunables.max_frame)

    def _advance_commit(self) -> None:
        self._step(Applied(self.sm.seq))

    def _step(self, event: Event, now: float | None = None) -> None:
        """Feed the orderer core one event and carry out what it decides."""
        for effect in self.orderer.step(event, time.monotonic() if now is None else now):
            if isinstance(effect, Committed):
                self.replies.release(self.waiting, effect.upto)
                if self.active and not self._commit_scheduled:
                    # Members answer clients only for committed entries: tell them once a turn.
                    self._commit_scheduled = True
                    asyncio.get_running_loop().call_soon(self._broadcast_commit)
                self.replies.flush()
            elif isinstance(effect, DropLaggards):
                names, waited = ", ".join(effect.members), effect.waited * 1000
                log.warning("%s: no acknowledgement from %s for %.0f ms; asking the RM to drop "
                            "them from the ready set", self.id, names, waited)
                self._to_rm("lagging", {"members": list(effect.members),
                                        "reason": f"no acknowledgement for {waited:.0f} ms"})

    def _broadcast_commit(self) -> None:
        self._commit_scheduled = False
        if self.serving and self.commit > self._commit_sent:
            self._commit_sent = self.commit
            self._broadcast("commit", {"commit": self.commit})

    def on_member_hello(self, conn: Conn, msg: Message) -> None:
        member = require(msg, "id", str)
        seq = require(msg, "seq", int)
        last_epoch = require(msg, "last_epoch", int)
        trusted = bool(msg.get("trusted"))
        if member not in self.config.replica_ids or member == self.id:
            raise WireError("unknown_peer", f"{member!r} is not a replica of this cluster")
        conn.peer_id = member
        conn.claim("member", member)
        self.submit(self._handle_subscribe, conn,
                    {"id": member, "seq": seq, "last_epoch": last_epoch, "trusted": trusted,
                     "epoch": msg.get("e", 0)})

    def _handle_subscribe(self, conn: Conn, msg: Message) -> None:
        member = msg["id"]
        if not self.is_orderer or not admits("subscribe", msg["epoch"], self.epoch):
            # Not (or no longer) the orderer of its epoch: tell it the view we know and part.
            if self.view is not None:
                conn.send("view", {"view": self.view.to_wire()})
            conn.close()
            return
        trusted = msg["trusted"] and member in self.sync_set
        sub = Subscriber(member, conn, msg["seq"], trusted)
        self.subs.admit(sub)
        log.info("%s: %s subscribed (seq %d, %s)", self.id, member, sub.seq,
                 "ready member" if trusted else "newborn: sending a checkpoint")
        if self.recovering:
            self._continue_recovery()
            return
        self._sync_subscriber(sub, msg["last_epoch"])

    def _sync_subscriber(self, sub: Subscriber, last_epoch: int) -> None:
        """Send a subscriber what it lacks: log entries when we can, else a checkpoint."""
        payload: dict[str, Any] = {"commit": self.commit, "view": self.view.to_wire()}
        entries = None
        at = self.log.entry(sub.seq)
        if catchup_from_log(trusted=sub.trusted, held=sub.seq, held_epoch=last_epoch,
                            seq=self.sm.seq, epoch_at=at["e"] if at is not None else None,
                            log_base=self.log.base, checkpoint_seq=self.checkpoints.prev_seq):
            entries = self.log.entries_after(sub.seq)  # None: truncated meanwhile
        held = sub.seq
        if entries is None:
            # A state of many parts is encoded as the link drains, so it is sent from a copy
            # the applier does not change meanwhile; one that fits a part goes at once.
            cp = self.sm.snapshot(self.epoch, copy=True)
            held = 0  # what it had is not known to be ours: only its ack counts
            self.checkpoints.announce(cp, [sub.id], "catch-up")
            parts = CheckpointParts(cp, "catchup", {**payload, "entries": []}, self.id,
                                    self.epoch, self._limit)
            small = parts.all_if_small()
            if small is None:
                spawn(self._transfer(sub, parts, self.sm.seq, held, parts),
                      f"transfer-{sub.id}")
                return
            bodies = small
        else:
            whole = self._body("catchup", {**payload, "entries": entries})
            if len(whole) <= self._limit:
                bodies = [whole]
            else:  # the catch-up itself, then the log in slices that fit a frame
                bodies = [self._body("catchup", {**payload, "entries": []}),
                          *self._entries_bodies(entries)]
        if len(bodies) == 1:
            sub.conn.send_raw(bodies[0])
            self._mark_synced(sub, held)
            return
        # Many frames: paced by what the link drains, then what was ordered meanwhile.
        upto = entries[-1]["s"] if entries else (sub.seq if held else self.sm.seq)
        spawn(self._transfer(sub, bodies, upto, held), f"transfer-{sub.id}")

    def _mark_synced(self, sub: Subscriber, held: int) -> None:
        sub.synced = True
        self._step(Holds(sub.id, held))

    async def _transfer(self, sub: Subscriber, bodies: Iterable[bytes], upto: int,
                        held: int, parts: CheckpointParts | None = None) -> None:
        """A catch-up of many frames, sent as the link drains (a burst of the whole would
        overflow the write buffer), then the entries ordered since ``upto``, then the stream."""
        sent = 0

        def counted() -> Iterator[bytes]:
            nonlocal sent
            for body in bodies:
                sent += 1
                yield body

        if not await send_paced(sub.conn, counted()):
            return
        if parts is not None:
            self.checkpoints.measured_large()
        if not self.subs.current(sub) or not self.is_orderer:
            return
        rest = self.log.entries_after(upto)
        if rest is None:  # the log moved past it meanwhile: it subscribes again
            sub.conn.close()
            return
        for body in self._entries_bodies(rest) if rest else ():
            sub.conn.send_raw(body)
        self._mark_synced(sub, held)
        log.info("%s: catch-up of %s sent in %d frames (+%d entries ordered meanwhile)",
                 self.id, sub.id, sent, len(rest))

    def on_member_ack(self, conn: Conn, msg: Message) -> None:
        seq = require(msg, "seq", int)
        member = conn.peer_id or ""
        sub = self.subs.get(member)
        if sub is None or sub.conn is not conn or not admits("ack", msg.get("e", 0), self.epoch):
            return
        sub.acked = max(sub.acked, seq)
        self._step(Acked(member, seq))

    def _continue_recovery(self) -> None:
        """View change: gather every ready member, adopt the longest history, then serve."""
        if not self.recovering or self._fetch_from is not None:
            return
        step = recovery_step(self.sync_set, {s.id: (s.seq, s.trusted) for s in self.subs},
                             self.sm.seq)
        if isinstance(step, WaitForMembers):
            return
        if isinstance(step, FetchFrom):
            ahead = self.subs[step.member]
            self._fetch_from = ahead.id
            self._fetch_parts.reset()
            log.info("%s: view change: fetching entries %d..%d from %s", self.id,
                     step.since + 1, ahead.seq, ahead.id, extra={"kind": "decision"})
            ahead.conn.send("fetch", {"from": step.since})
            return
        self.recovering = False
        self._recovery_deadline = 0.0
        for sub in self.subs:
            last = self.log.entry(sub.seq)
            self._sync_subscriber(sub, last["e"] if last else 0)
        self._step(Serving(self.sm.seq))  # commits only what its members acknowledge
        label = "sequencer" if self.active else "primary"
        log.info("%s: I am the %s of epoch %d (seq %d, ready: %s)", self.id, label, self.epoch,
                 self.sm.seq, ", ".join(self.view.members), extra={"kind": "membership"})
        # Requests recorded while another replica ordered, then those held meanwhile: one
        # step of them now, the rest ahead of the inbox, a step per turn of the applier (a
        # herd of sessions held the loop for seconds, and the LFD took that for a hang).
        self._expand_recorded_batches()
        backlog = [(rec.conn, client, rec.request_num, rec.op)
                   for client, rec in sorted(self.recorded.items())]
        self.recorded.clear()
        backlog += self._held
        self._queued -= len(self._held)
        self._held = []
        self._order_backlog(_NO_CONN, {"reqs": backlog[:APPLIER_STEP_REQUESTS]})
        rest = [backlog[i:i + APPLIER_STEP_REQUESTS]
                for i in range(APPLIER_STEP_REQUESTS, len(backlog), APPLIER_STEP_REQUESTS)]
        for step in reversed(rest):
            self._inbox.appendleft((self._order_backlog, _NO_CONN, {"reqs": step}))
            self._queued += len(step)
        if rest:
            self._wake.set()
        self._resume_if_drained()
        self.push_view_to_clients()
        self.report(force=True)

    def _order_backlog(self, _conn: Conn, msg: Message) -> None:
        """Requests a view change kept, each with its own connection: ordered if this replica
        still serves, held again if another view change began meanwhile."""
        for conn, client, request_num, op in msg["reqs"]:
            if conn.is_closing():
                continue
            if self.serving:
                self._order(conn, client, request_num, op)
            elif self.is_orderer:
                self._hold(conn, client, request_num, op)
            # else deposed: its client resends to the primary the new view names

    def on_fetched(self, conn: Conn, msg: Message) -> None:
        self.submit(self._handle_fetched, conn, msg)

    def _handle_fetched(self, conn: Conn, msg: Message) -> None:
        if not self.recovering or conn.peer_id != self._fetch_from \
                or not admits("fetched", msg.get("e", 0), self.epoch):
            return
        if msg["t"] == "cp_part":
            self._fetch_parts.add(msg)
            return
        sums = None
        if msg.get("checkpoint") is not None:
            msg = {**msg, "checkpoint": self._fetch_parts.complete(msg["checkpoint"])}
            sums = self._fetch_parts.last_sums
        self._install_payload(msg, sums)
        self._fetch_from = None
        self._continue_recovery()

    def _send_checkpoint(self, _conn: Conn, _msg: Message) -> None:
        if not self.serving:
            return
        self._ship()  # entries before the checkpoint, in stream order
        cp = self.sm.snapshot(self.epoch, state=self.checkpoints.may_go_whole())
        bodies, why = self.checkpoints.periodic(cp, self.id, self.epoch, self._limit, self._body)
        receivers = self.subs.broadcast(bodies)
        if receivers:
            self.checkpoints.sent += 1
            self.checkpoints.announce(cp, receivers, why)
        self.checkpoints.taken(cp["seq"])

    # ===================================================================== member side ====
    def on_upstream_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind in ("entries", "catchup", "checkpoint", "cp_part", "commit", "fetch", "view"):
            if not may_come_due(msg.get("e", 0), self.epoch):
                return  # a deposed orderer's stream: fenced off
            self.submit(self._handle_upstream, conn, msg)
        elif kind == "error":
            log.warning("%s: orderer refused the subscription: %s", self.id, msg.get("message"))
        else:
            raise WireError("unknown_type", f"unexpected {kind!r} from the orderer")

    def _handle_upstream(self, conn: Conn, msg: Message) -> None:
        if self.upstream is None or self.upstream.conn is not conn:
            return
        kind = msg["t"]
        if kind == "view":
            self._on_view(conn, {"view": require(msg, "view", dict)})
            return
        if not admits(kind, msg.get("e", 0), self.epoch):
            return
        if kind == "cp_part":
            self._parts.add(msg)
            return
        if kind == "catchup":
            commit = require(msg, "commit", int)
            sums = None
            if msg.get("checkpoint") is not None:
                msg = {**msg, "checkpoint": self._parts.complete(msg["checkpoint"])}
                sums = self._parts.last_sums
            self._install_payload(msg, sums)
            self.caught_up = True
            self.member_commit = max(self.member_commit, commit)
            log.info("%s: caught up with %s at seq %d (i_am_ready = %d)", self.id,
                     self.view.primary if self.view else "?", self.sm.seq, int(self.ready),
                     extra={"kind": "state"})
            self.report(force=True)
        elif kind == "entries":
            if not self.caught_up:
                return
            entries = require(msg, "entries", list)
            if REORDER and len(entries) >= 2 and isinstance(entries[0], dict) \
                    and isinstance(entries[1], dict):
                first, second = dict(entries[0]), dict(entries[1])
                for name in ("c", "r", "op"):
                    first[name], second[name] = second[name], first[name]
                entries = [first, second, *entries[2:]]
            for entry in entries:
                self._member_apply(conn, entry)
            self._member_commit(require(msg, "commit", int))
        elif kind == "commit":
            self._member_commit(require(msg, "commit", int))
            return
        elif kind == "checkpoint":
            if msg.get("digest_only"):
                if not self._take_digest_checkpoint(conn, require(msg, "checkpoint", dict)):
                    return
            else:
                cp = self._parts.complete(require(msg, "checkpoint", dict))
                self.checkpoints.from_stream(cp, self._primary_name, self._parts.last_sums)
        elif kind == "fetch":
            since = require(msg, "from", int)
            entries = self.log.entries_after(since)
            if entries is None:
                cp = self.sm.snapshot(self.epoch, copy=True)  # sent over many turns
                parts = CheckpointParts(cp, "fetched", {"entries": []}, self.id, self.epoch,
                                        self._limit)
                small = parts.all_if_small()
                if small is None:
                    spawn(send_paced(conn, parts), "fetched")
                    return
                bodies = small
            else:  # the first slice that fits: the new orderer fetches again for the rest
                bodies = pack(entries, lambda part: self._body("fetched", {"entries": part}),
                              self._limit)[:1]
            if len(bodies) == 1:
                conn.send_raw(bodies[0])
            else:
                spawn(send_paced(conn, bodies), "fetched")
            return
        conn.send("ack", {"seq": self.sm.seq})

    def _member_apply(self, conn: Conn, entry: Any) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("s"), int):
            raise WireError("malformed", "entries: bad entry")
        seq = entry["s"]
        step = next_in_stream(seq, self.sm.seq)
        if step is InStream.HELD:
            return
        if step is InStream.GAP:
            log.error("%s: gap in the stream (got %d after %d); resubscribing", self.id, seq,
                      self.sm.seq)
            self.caught_up = False
            conn.close()
            return
        check_entry("entries", entry)
        replies = self.active and self.ready
        # Answer only the connection that sent this very operation: another connection using
        # the same client id and request_num (a reused id) must not take this reply for its own.
        asker = self.recorded.get(entry["c"]) if replies else None
        result = self._apply(entry, announce=replies)
        if asker is not None and asker.request_num == entry["r"] \
                and fingerprint(asker.op) == fingerprint(entry["op"]):
            self.replies.when_committed(self.member_waiting, self.member_commit, asker.conn,
                                       entry["c"], entry["r"], seq, result, asker.received)

    def _member_commit(self, commit: int) -> None:
        if commit > self.member_commit:
            self.member_commit = commit
            self.replies.release(self.member_waiting, commit)

    def _install_payload(self, msg: Message, sums: Sums | None = None) -> None:
        """Install a catch-up/fetch payload: optional checkpoint, then entries beyond it
        (``sums``: the checkpoint's hashes, taken as its parts arrived)."""
        entries = msg.get("entries") or []
        if not isinstance(entries, list):
            raise WireError("malformed", f"{msg['t']}: field 'entries' is not a list")
        for entry in entries:  # all checked before anything is installed
            if isinstance(entry, dict) and isinstance(entry.get("s"), int):
                check_entry(msg["t"], entry)
        cp = msg.get("checkpoint")
        if cp is not None:
            self.checkpoints.install(cp, sums)
            self.member_waiting.clear()
        replayed = 0
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("s"), int) \
                    and entry["s"] == self.sm.seq + 1:
                self._apply(entry, announce=False)
                replayed += 1
        if replayed:
            log.info("%s: replayed %d entries beyond the checkpoint (now seq %d)", self.id,
                     replayed, self.sm.seq, extra={"kind": "state"})

    def _take_digest_checkpoint(self, conn: Conn, cp: dict[str, Any]) -> bool:
        """A checkpoint without its state. A member that differs (it diverged, or missed
        entries) takes the whole state again: it subscribes anew, untrusted."""
        if self.checkpoints.compare(cp, self._primary_name) is AtCheckpoint.MATCH:
            return True
        self.caught_up = False
        conn.close()
        return False

    @property
    def _primary_name(self) -> str:
        return self.view.primary if self.view else "?"

    # ==================================================================== views & RM ====
    def on_view(self, conn: Conn, msg: Message) -> None:
        view = View.from_wire(msg.get("view"))
        for member in view.members:
            if member not in self.config.replica_ids:
                raise WireError("malformed", f"view names unknown replica {member!r}")
        self.submit(self._on_view, conn, {"view": view})

    def _on_view(self, conn: Conn, msg: Message) -> None:
        view = msg["view"]
        if not isinstance(view, View):
            view = View.from_wire(view)
        if ACK_AFTER_DEPOSED and self.is_orderer and view.primary != self.id:
            log.critical("%s: PLANTED BUG: ignoring the view that deposes me", self.id)
            return
        authority = conn.role in ("rm", "admin")
        verdict = judge_view(self.view, view, self.id, self.incarnation)
        if verdict.take is Take.REFUSE:
            # Made for an earlier process of mine, which held the state: I hold nothing of it.
            if verdict.newer:
                log.error("%s: refusing view %s: it names incarnation %s as primary, I am %s "
                          "(restarted, without its state)", self.id, view.describe(),
                          view.incarnation(self.id), self.incarnation)
            if authority:
                conn.send("view_ack", self.status())
            return
        if verdict.take is Take.KNOWN:
            if authority:
                if verdict.same:
                    self._grant_view_lease(view)
                conn.send("view_ack", self.status())
            return
        old = self.view
        was_ready = self.ready
        self.view = view
        new_epoch, in_view = verdict.new_epoch, verdict.counted
        log.info("%s: view %s", self.id, view.describe(), extra={"kind": "membership"})
        if new_epoch:
            self._leave_epoch()
        if authority:
            self._grant_view_lease(view)
        if verdict.lead:
            if new_epoch:
                self._become_orderer()
            else:
                self._sync_set_changed(old)
        else:
            if not in_view:
                if self.trusted:
                    log.warning("%s: removed from the ready set; will catch up again", self.id)
                # Whatever it holds may miss entries now: it takes a checkpoint again.
                self.caught_up = False
            self.trusted = in_view
            if new_epoch or self.upstream is None or not self.caught_up \
                    or self.upstream.target != view.primary:
                self._subscribe()
        if self.ready != was_ready:
            log.info("%s: i_am_ready = %d", self.id, int(self.ready), extra={"kind": "state"})
        if conn.role in ("rm", "admin"):
            conn.send("view_ack", self.status())
        self.push_view_to_clients()
        self.report(force=True)

    def _leave_epoch(self) -> None:
        """Forget the previous epoch's orderer state (its pending replies die with it)."""
        self.subs.close_all()
        self._step(LeftEpoch())
        self.waiting.clear()
        self.member_waiting.clear()
        self._entries_out.clear()
        self._queued -= len(self._held)
        self._held.clear()
        self._resume_if_drained()
        self._fetch_from = None
        self.recovering = False
        self._lease_sent.clear()
        self._vouched = None

    def _grant_view_lease(self, view: View) -> None:
        """A view from the RM (or an operator) carries the primary's first lease."""
        if view.lease and view.primary == self.id:
            self._step(Lease(time.monotonic() + view.lease))

    def _become_orderer(self) -> None:
        if not (self.trusted and self.caught_up) and self.sm.seq:
            log.warning("%s: promoted without a confirmed state; the view change will bring "
                        "the ready members' history", self.id)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.trusted = True
        self.caught_up = True
        self.recovering = True
        self._step(TookEpoch(tuple(self.sync_set)))
        self._recovery_deadline = time.monotonic() + self.tunables.view_change_timeout
        log.info("%s: view change to epoch %d: collecting from %s", self.id, self.epoch,
                 ", ".join(self.sync_set) or "nobody", extra={"kind": "decision"})
        self._continue_recovery()

    def _sync_set_changed(self, old: View | None) -> None:
        before = set(old.members) if old else set()
        holds = {}
        for member in self.sync_set:
            sub = self.subs.get(member)
            if member not in before and sub is not None:
                sub.trusted = True
                # What it held when subscribing, or acknowledged since on this stream: a view
                # that removed it meanwhile (the orderer then forgot its acks) changes neither.
                holds[member] = max(sub.seq, sub.acked)
        for member in before - set(self.view.members if self.view else ()):
            sub = self.subs.get(member)
            if sub is not None:
                sub.trusted = False
        self._step(ReadySet(tuple(self.sync_set), self.sm.seq, holds))
        if self.recovering:
            self._continue_recovery()

    def _subscribe(self) -> None:
        if self.view is None:
            return
        if self.upstream is not None:
            self.upstream.close()
        if not (self.trusted and self.caught_up):
            self.caught_up = False  # an untrusted subscriber always starts from a checkpoint
        self._parts.reset()
        try:
            target = self.config.replica(self.view.primary)
        except ConfigError:
            # The RM's file names it and mine does not: follow it once mine does (a reload).
            self.upstream = None
            log.error("%s: the view's %s %s is not in my cluster file (%s); I follow it once "
                      "the file names it and is reloaded", self.id,
                      "sequencer" if self.config.mode == "active" else "primary",
                      self.view.primary, self.config.path)
            return
        self.upstream = Upstream(self, target)
        self.upstream.start()

    def reconfigured(self, config: ClusterConfig) -> None:
        """A reloaded cluster file: a member that could not follow its primary tries again."""
        self.config = config
        if self.view is not None and self.view.primary != self.id and self.upstream is None:
            self._subscribe()

    def subscription_fields(self) -> dict[str, Any]:
        last = self.log.entry(self.sm.seq)
        last_epoch = last["e"] if last else self.sm.last_epoch
        trusted = self.trusted and self.caught_up
        return {"role": "member", "id": self.id, "seq": self.sm.seq if trusted else 0,
                "last_epoch": last_epoch, "trusted": trusted}

    def upstream_lost(self) -> None:
        """The stream to the orderer broke; a trusted member keeps its state and resumes."""
        self.member_waiting.clear()
        self._parts.reset()  # a checkpoint cut off mid-transfer starts over

    def on_lease(self, conn: Conn, msg: Message) -> None:
        n = require(msg, "n", int)
        duration = require(msg, "duration", (int, float))
        sent = self._lease_sent.pop(n, None)
        if sent is None or not admits("lease", msg.get("e", 0), self.epoch) or not self.is_orderer:
            return
        self._step(Lease(sent + float(duration)))
        for old in [k for k in self._lease_sent if k < n]:
            del self._lease_sent[old]
        if self.serving and not self.sync_set:
            self.submit(lambda _c, _m: self._advance_commit(), conn, msg)

    def _request_lease(self) -> None:
        if not self.rm_conns:
            return
        self._lease_n += 1
        self._lease_sent[self._lease_n] = time.monotonic()
        for conn in self.rm_conns:
            conn.send("lease_req", {"n": self._lease_n})

    def _to_rm(self, kind: str, fields: dict[str, Any]) -> None:
        for conn in self.rm_conns:
            conn.send(kind, fields)

    def vouched(self) -> list[int] | None:
        """[epoch, version] of the newest view whose every member acknowledged all that was
        committed when this orderer took it: the RM counts its members as holders (electable)
        only from then on."""
        view = self.view
        if view is not None and self.orderer.vouches():
            self._vouched = [view.epoch, view.version]
        return self._vouched

    def report(self, force: bool = False) -> None:
        self._last_report = time.monotonic()
        if self.rm_conns:
            self._to_rm("report", self.status(light=True))
        if force:  # forced at every view, view change's end and catch-up: a new status
            self.status_changed()

    def status_line(self) -> str:
        """What ``systemctl status`` shows: role, epoch, readiness, applied seq."""
        view = self.view
        if view is None:
            return f"{self.role_name}, no view yet, i_am_ready=0, seq {self.sm.seq}"
        head = f"{self.role_name}, epoch {view.epoch} (view {view.epoch}.{view.version})"
        if self.recovering:
            return (f"{head}, view change: collecting from {', '.join(self.sync_set) or 'nobody'}"
                    f", i_am_ready=0, seq {self.sm.seq}")
        if self.is_orderer:
            return f"{head}, i_am_ready=1, seq {self.sm.seq}, ready {', '.join(view.members)}"
        why = "" if self.ready else " (not in the ready set)" if not self.trusted \
            else f" (catching up with {view.primary})"
        return f"{head}, i_am_ready={int(self.ready)}{why}, seq {self.sm.seq}"

    def status(self, light: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
            "mode": self.config.mode,
            "role": self.role_name,
            "i_am_ready": int(self.ready),
            "caught_up": self.caught_up,
            "recovering": self.recovering,
            "epoch": self.epoch,
            "view": self.view.to_wire() if self.view else None,
            "seq": self.sm.seq,
            "commit": self.commit if self.is_orderer else self.member_commit,
            "vouched": self.vouched(),
            "checkpoint_count": self.sm.checkpoint_count,
            "last_epoch": self.sm.last_epoch,
            "recorded": len(self.recorded),
            "clients": len(self.sm.clients),
            "client_links": len(self.client_links),
            "lease_left": round(max(0.0, self.lease_until - time.monotonic()), 3),
            "subscribers": {s.id: self.acked.get(s.id, s.seq) for s in self.subs},
            "upstream": self.upstream.target if self.upstream else None,
            "stats": {
                "ordered": self.stats.ordered, "executed": self.sm.executed,
                "replies": self.replies.sent,
                "duplicates_answered": self.stats.duplicates_answered,
                "checkpoints_sent": self.checkpoints.sent,
                "checkpoints_received": self.checkpoints.received,
                "divergences": self.checkpoints.divergences,
                "rejected_frames": self.stats.rejected_frames,
            },
        }
        if not light:
            data["digest"] = self.sm.digest()
            data["keys"] = len(self.sm.kv)
            data["latency"] = self.replies.latency()
        return data


class _NoConn:
    """Stands in for a connection for internally generated inbox events."""

    role = "internal"
    peer_id = None

    def is_closing(self) -> bool:
        return False


_NO_CONN: Any = _NoConn()


def check_entry(kind: str, entry: dict[str, Any]) -> None:
    """An entry of an orderer's stream (``entries``, ``catchup``, ``fetched``) that can be
    applied and logged, or a WireError: a member never applies half an entry."""
    if validate_op(entry.get("op"), values=False) is not None \
            or not isinstance(entry.get("c"), str) \
            or not isinstance(entry.get("r"), int) or not isinstance(entry.get("e"), int) \
            or not isinstance(entry.get("t", 0), int):
        raise WireError("malformed", f"{kind}: entry {entry.get('s')} is malformed")
