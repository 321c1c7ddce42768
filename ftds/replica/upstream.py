"""A member's subscription to the orderer of its view: connect, say where it stands, resume.

The stream itself is handled by the replica; this only keeps the connection alive, retrying with
a short capped backoff so a member follows a new orderer within a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from ..config import ClusterConfig, ReplicaSpec
from ..supervise import spawn
from ..tls import LinkTls
from ..wire import Conn, Message, connect, stay_connected


class Subscriber(Protocol):
    """What the stream needs of the member it feeds (the replica): no import of it here."""

    id: str
    key: bytes
    config: ClusterConfig
    tls: LinkTls | None

    @property
    def epoch(self) -> int: ...

    def on_upstream_message(self, conn: Conn, msg: Message) -> None: ...

    def subscription_fields(self) -> dict[str, Any]: ...

    def upstream_lost(self) -> None: ...


log = logging.getLogger("ftds.replica")

BACKOFF_FIRST = 0.02
BACKOFF_MAX = 1.0


class Upstream:
    def __init__(self, replica: Subscriber, target: ReplicaSpec) -> None:
        self.replica = replica
        self.target = target.id
        self._spec = target
        self.conn: Conn | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = spawn(self._run(), f"upstream-{self.target}")

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def _run(self) -> None:
        replica = self.replica

        def dial() -> Awaitable[Conn]:
            tun = replica.config.tunables
            return connect(self._spec.host, self._spec.control_port, replica.key, tun.max_frame,
                           replica.id, timeout=tun.connect_timeout,
                           epoch_fn=lambda: replica.epoch,
                           on_message=replica.on_upstream_message,
                           label=f"{replica.id}->{self.target} stream",
                           tls=replica.tls, expect=f"replica {self.target}")

        async def subscribed(conn: Conn) -> None:
            if self._closed:
                return
            self.conn = conn
            conn.send("hello", replica.subscription_fields())
            await conn.closed
            if self.conn is conn:
                self.conn = None
            replica.upstream_lost()

        def unreachable(exc: BaseException) -> None:
            log.warning("%s: cannot reach %s (%s); retrying", replica.id, self.target,
                        exc.__class__.__name__)

        await stay_connected(dial, subscribed, first=BACKOFF_FIRST, cap=BACKOFF_MAX,
                             on_unreachable=unreachable)
