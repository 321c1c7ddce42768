"""The ftds client library: every request to every replica, the first reply wins.

A ``Client`` keeps one connection to each replica of the cluster file (reconnecting when one
goes away) and multiplexes any number of logical clients (``Session``; the course's C1..Cm) over
them. A session has at most one request outstanding; a request keeps its ``request_num`` through
every retry — on timeout, on reconnection and when a replica announces a new view — so the
replicas execute it once and answer retries from their reply cache. Replies after the first are
discarded with the course's line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import ClusterConfig, ReplicaSpec
from .log import msg_id
from .replica.transfer import pack
from .statemachine import client_id_problem
from .wire import (
    MAC_LEN,
    MAX_REQUESTS_PER_FRAME,
    Conn,
    Message,
    connect,
    encode_body,
    envelope,
    frame,
    stay_connected,
    unencodable,
)

log = logging.getLogger("ftds.client")

# The longest wait before a request is resent, in request timeouts (1, 2, 4, then 8 each).
RETRY_BACKOFF = 8


class RequestFailed(Exception):
    """A request that could not be completed (the client was closed)."""


@dataclass
class Outstanding:
    client: str
    request_num: int
    op: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    attempt: int = 1
    sent_at: float = field(default_factory=time.monotonic)
    timeouts: int = 0  # retries for want of a reply: each waits twice as long (up to a cap)
    first: bool = False  # the session's first request: it may learn its watermark from it


def retry_due(out: Outstanding, now: float, timeout: float) -> bool:
    """Whether ``out``, unanswered, is sent again now: ``timeout`` after it was last sent,
    doubled for each retry it had for want of a reply, up to RETRY_BACKOFF timeouts."""
    return now - out.sent_at >= timeout * min(1 << out.timeouts, RETRY_BACKOFF)


class ReplicaLink:
    """One replica: a connection kept alive, with batched sends."""

    def __init__(self, client: Client, spec: ReplicaSpec) -> None:
        self.client = client
        self.spec = spec
        self.conn: Conn | None = None
        self.ready = False
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.spec.id}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.conn:
            self.conn.close()

    @property
    def usable(self) -> bool:
        conn = self.conn
        return conn is not None and not conn.is_closing() and self.connected.is_set()

    def send(self, item: dict[str, Any]) -> bool:
        """Send one request to this replica only (e.g. when it just came back)."""
        if not self.usable:
            return False
        self.conn.send("req", {"reqs": [item]})  # type: ignore[union-attr]
        return True

    async def _run(self) -> None:
        c = self.client

        def dial() -> Awaitable[Conn]:
            return connect(self.spec.host, self.spec.port, c.key, c.config.tunables.max_frame,
                           c.name, timeout=c.config.tunables.connect_timeout,
                           on_message=self._on_message, label=f"{c.name}->{self.spec.id}",
                           tls=c.tls, expect=f"replica {self.spec.id}")

        async def linked(conn: Conn) -> None:
            self.conn = conn
            conn.send("hello", {"client": c.name})
            await conn.closed
            self.conn = None
            self.connected.clear()
            self.ready = False
            c.link_lost(self)

        await stay_connected(dial, linked)

    def _on_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if kind == "reply":
            for item in msg.get("reps", ()):
                self.client.on_reply(self.spec.id, item)
        elif kind == "welcome":
            self.ready = bool(msg.get("ready"))
            mark = msg.get("watermark")
            if isinstance(mark, int):
                c = self.client
                c.watermarks[c.name] = max(c.watermarks.get(c.name, 0), mark)
            self.client.on_view(msg.get("view"))
            self.connected.set()
            self.client.link_up(self)
        elif kind == "view":
            self.ready = bool(msg.get("ready"))
            self.client.on_view(msg.get("view"))
        elif kind == "error":
            log.error("%s: %s refused: %s", self.client.name, self.spec.id, msg.get("message"))


class Client:
    def __init__(self, config: ClusterConfig, key: bytes, name: str = "C1", *,
                 trace: bool | None = None, replicas: list[str] | None = None) -> None:
        self.config = config
        self.key = key
        # Under TLS a client presents the client certificate of its host (tls.dir/client.crt).
        self.tls = config.link_tls("client")
        if (problem := client_id_problem(name)) is not None:
            raise ValueError(f"{name!r}: {problem}")
        self.name = name
        self.trace = config.trace.requests if trace is None else trace
        wanted = replicas or config.replica_ids
        self.links = {s.id: ReplicaLink(self, s) for s in config.replicas if s.id in wanted}
        self.outstanding: dict[tuple[str, int], Outstanding] = {}
        self.epoch = 0
        self.primary: str | None = None
        self.members: list[str] = []
        self.on_view_change: Callable[[int, str | None], None] | None = None
        self._sessions: dict[str, Session] = {}
        self._batch: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self._retry_task: asyncio.Task[None] | None = None
        self.stats = {"sent": 0, "replies": 0, "duplicates": 0, "retries": 0, "duplicated": 0}
        self.duplicate_every = 0  # > 0: send every Nth request twice (fault injection)
        # Highest request_num the replicas hold for our name (a restarted client resumes past it).
        self.watermarks: dict[str, int] = {}

    async def start(self, wait: float | None = None) -> None:
        for link in self.links.values():
            link.start()
        self._retry_task = asyncio.create_task(self._retry_loop(), name="client-retry")
        if wait:
            await self.wait_connected(wait)

    async def wait_connected(self, timeout: float, count: int | None = None) -> None:
        """Wait until ``count`` replicas (default: all) accepted our hello."""
        need = len(self.links) if count is None else count
        deadline = time.monotonic() + timeout
        while sum(link.connected.is_set() for link in self.links.values()) < need:
            if time.monotonic() > deadline:
                up = [i for i, link in self.links.items() if link.connected.is_set()]
                raise TimeoutError(f"{self.name}: connected to {up or 'no replica'} only")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._retry_task:
            self._retry_task.cancel()
        for link in self.links.values():
            await link.close()
        for out in self.outstanding.values():
            if not out.future.done():
                out.future.set_exception(RequestFailed("client closed"))
        self.outstanding.clear()

    def session(self, client_id: str | None = None) -> Session:
        cid = client_id or self.name
        session = self._sessions.get(cid)
        if session is None:
            if (problem := client_id_problem(cid)) is not None:
                raise ValueError(f"{cid!r}: {problem}")
            session = self._sessions[cid] = Session(self, cid)
        return session

    async def call(self, op: dict[str, Any]) -> dict[str, Any]:
        """Send one request as this client (its own name) and return the first reply."""
        return await self.session().call(op)

    # -- sending ---------------------------------------------------------------------------
    def _transmit(self, out: Outstanding) -> None:
        """Queue a request for every replica; all requests of one turn leave in one frame."""
        self._batch.append({"c": out.client, "r": out.request_num, "op": out.op,
                            "a": out.attempt})
        out.sent_at = time.monotonic()
        if self.trace:
            for rid, link in self.links.items():
                if link.usable:
                    log.info("Sent %s", msg_id(out.client, rid, out.request_num, "request"),
                             extra={"kind": "sent"})
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._batch = self._batch, []
        conns = [link.conn for link in self.links.values() if link.usable]
        if batch and conns:
            # A replica takes a frame of at most MAX_REQUESTS_PER_FRAME requests, in one turn.
            for start in range(0, len(batch), MAX_REQUESTS_PER_FRAME):
                self._send_slice(conns, batch[start:start + MAX_REQUESTS_PER_FRAME])
            self.stats["sent"] += len(batch) * len(conns)

    def _send_slice(self, conns: list[Conn], reqs: list[dict[str, Any]]) -> None:
        """``req`` frames for ``reqs``, halved until each fits one (``transfer.pack``); a single
        request too large for a frame fails here instead of being refused, reconnected and sent
        again forever."""
        max_frame = self.config.tunables.max_frame
        bodies = pack(reqs, lambda part: encode_body(envelope("req", self.name, 0,
                                                              {"reqs": part})), max_frame // 2)
        for body in bodies:
            if len(body) + MAC_LEN > max_frame:  # one request alone (pack halves the rest)
                req = orjson.loads(body)["reqs"][0]
                out = self.outstanding.pop((req["c"], req["r"]), None)
                if out is not None and not out.future.done():
                    out.future.set_exception(RequestFailed(
                        f"request of {len(body)} bytes is larger than a frame "
                        f"(max_frame {max_frame})"))
                continue
            data = frame(body, self.key)
            for conn in conns:
                conn.send_frame(data)

    def submit(self, client_id: str, request_num: int, op: dict[str, Any],
               first: bool = False) -> Outstanding:
        """Send ``op`` as (client_id, request_num) to every replica. An op the wire would not
        carry as it is raises ValueError: orjson writes NaN as null (a put of null), and one it
        cannot encode would lose the whole frame of the turn."""
        if (problem := unencodable(op)) is not None:
            raise ValueError(f"op cannot be sent: {problem}")
        loop = asyncio.get_running_loop()
        out = Outstanding(client_id, request_num, op, loop.create_future(), first=first)
        self.outstanding[(client_id, request_num)] = out
        self._transmit(out)
        if self.duplicate_every and request_num % self.duplicate_every == 0:
            # Fault injection (chaos runs): the same request again at once, as a retry, the way
            # a network or an impatient client duplicates it; the replicas must execute it once.
            loop.call_soon(self._duplicate, out)
        return out

    def _duplicate(self, out: Outstanding) -> None:
        if not out.future.done():
            out.attempt += 1
            self.stats["duplicated"] += 1
            self._transmit(out)

    def retransmit_all(self, why: str) -> None:
        for out in list(self.outstanding.values()):
            if not out.future.done():
                out.attempt += 1
                self.stats["retries"] += 1
                if self.trace:
                    log.info("%s: retrying request_num %d (%s)", out.client, out.request_num,
                             why, extra={"kind": "sent"})
                self._transmit(out)

    async def _retry_loop(self) -> None:
        """Resend a request that had no reply in ``request_timeout``, then after twice that, up
        to RETRY_BACKOFF times it. A retry at a fixed pace is a retry storm when the replicas
        are merely slow: 100,000 requests out were all sent again every second, and the
        replicas spent their time on copies while the originals waited behind them."""
        while True:
            timeout = self.config.tunables.request_timeout
            await asyncio.sleep(min(timeout / 4, 0.25))
            now = time.monotonic()
            for out in list(self.outstanding.values()):
                if not out.future.done() and retry_due(out, now, timeout):
                    out.timeouts += 1
                    out.attempt += 1
                    self.stats["retries"] += 1
                    if self.trace:
                        log.info("%s: no reply to request_num %d after %.1fs; retrying",
                                 out.client, out.request_num, timeout, extra={"kind": "sent"})
                    self._transmit(out)

    # -- receiving -------------------------------------------------------------------------
    def on_reply(self, replica: str, item: Any) -> None:
        if not isinstance(item, dict):
            return
        key = (item.get("c"), item.get("r"))
        res = item.get("res")
        mark = item.get("watermark")
        if isinstance(res, dict) and res.get("stale") and isinstance(mark, int):
            out = self.outstanding.get(key)  # type: ignore[arg-type]
            if out is not None and out.first and not out.future.done():
                self._renumber(out, mark)
                return
        out = self.outstanding.pop(key, None)  # type: ignore[arg-type]
        if out is None or out.future.done():
            self.stats["duplicates"] += 1
            if self.trace:
                log.info("request_num %s: Discarded duplicate reply from %s.", item.get("r"),
                         replica, extra={"kind": "duplicate"})
            return
        self.stats["replies"] += 1
        if self.trace:
            log.info("Received %s", msg_id(str(key[0]), replica, int(key[1]), "reply"),
                     extra={"kind": "received"})
        item["from"] = replica
        out.future.set_result(item)

    def _renumber(self, out: Outstanding, watermark: int) -> None:
        """A restarted client reused its id: continue after what the replicas have seen."""
        del self.outstanding[(out.client, out.request_num)]
        session = self.session(out.client)
        session.request_num = max(session.request_num, watermark)
        out.request_num = session.request_num + 1
        session.request_num = out.request_num
        out.first = False
        out.attempt = 1
        self.outstanding[(out.client, out.request_num)] = out
        self._transmit(out)

    def on_view(self, view: Any) -> None:
        if not isinstance(view, dict):
            return
        epoch = view.get("epoch")
        if not isinstance(epoch, int) or epoch <= self.epoch:
            if isinstance(epoch, int) and epoch == self.epoch:
                self.members = list(view.get("members") or self.members)
            return
        changed = self.epoch != 0
        self.epoch = epoch
        self.primary = view.get("primary")
        self.members = list(view.get("members") or [])
        if self.on_view_change:
            self.on_view_change(epoch, self.primary)
        if changed:
            self.retransmit_all(f"new view: epoch {epoch}, primary {self.primary}")

    def link_up(self, link: ReplicaLink) -> None:
        # A replica that was away gets what is outstanding (it may be the new primary).
        item_list = [o for o in self.outstanding.values() if not o.future.done()]
        for out in item_list:
            link.send({"c": out.client, "r": out.request_num, "op": out.op,
                       "a": out.attempt + 1})

    def link_lost(self, link: ReplicaLink) -> None:
        if self.trace:
            log.info("%s: connection to %s lost; reconnecting", self.name, link.spec.id)


class Session:
    """One logical client: one request at a time, request_num counting from 1."""

    def __init__(self, client: Client, client_id: str, first_request_num: int = 1) -> None:
        self.client = client
        self.id = client_id
        self.request_num = first_request_num - 1

    def start(self, op: dict[str, Any]) -> Outstanding:
        """Send without waiting (the caller awaits ``.future``); still one at a time."""
        first = self.request_num == 0
        num = max(self.request_num, self.client.watermarks.get(self.id, 0)) + 1
        out = self.client.submit(self.id, num, op, first=first)
        self.request_num = num  # only once sent: a refused op takes no number
        return out

    async def call(self, op: dict[str, Any]) -> dict[str, Any]:
        return await self.start(op).future
