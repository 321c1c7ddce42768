"""The orderer's subscribers: who streams from it, what each held when it subscribed, and the
stream itself, each body framed once and written to every member that was caught up.

A member is sent the stream only once it is *synced* (its catch-up went out in full), so an
entry never overtakes the checkpoint or log it follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from ..wire import Conn, frame

log = logging.getLogger("ftds.replica")


@dataclass
class Subscriber:
    """A member streaming from this orderer."""

    id: str
    conn: Conn
    seq: int  # what it had when it subscribed
    trusted: bool  # in the ready set: its log is a prefix of ours
    synced: bool = False  # caught-up payload sent
    acked: int = 0  # the highest seq it acknowledged on this stream (ours, whatever the view)


class Fanout:
    """The members subscribed to this orderer, one connection each."""

    def __init__(self, owner: str, key: bytes) -> None:
        self.owner = owner
        self.key = key
        self._subs: dict[str, Subscriber] = {}

    def __contains__(self, member: str) -> bool:
        return member in self._subs

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(list(self._subs.values()))

    def __len__(self) -> int:
        return len(self._subs)

    def __getitem__(self, member: str) -> Subscriber:
        return self._subs[member]

    def get(self, member: str) -> Subscriber | None:
        return self._subs.get(member)

    def current(self, sub: Subscriber) -> bool:
        """``sub`` is still the subscription of its member (not replaced or lost since)."""
        return self._subs.get(sub.id) is sub

    def admit(self, sub: Subscriber) -> None:
        """Take a new subscription; one the member had before is closed. When the connection
        closes, the member is forgotten (unless it has subscribed again meanwhile)."""
        old = self._subs.get(sub.id)
        if old is not None and old.conn is not sub.conn:
            old.conn.close()
        self._subs[sub.id] = sub
        previous = sub.conn.on_close

        def closed(conn: Conn) -> None:
            if previous:
                previous(conn)
            if self._subs.get(sub.id) is sub:
                del self._subs[sub.id]
                log.warning("%s: lost the stream to %s", self.owner, sub.id)

        sub.conn.on_close = closed

    def close_all(self) -> None:
        """A new epoch: every stream of the last one ends."""
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            sub.conn.close()

    def broadcast(self, bodies: list[bytes]) -> list[str]:
        """Encoded bodies, in order, to every synced subscriber (each framed once); the ids
        of those it went to."""
        receivers = [s for s in self._subs.values() if s.synced]
        if receivers:
            for body in bodies:
                data = frame(body, self.key)
                for sub in receivers:
                    sub.conn.send_frame(data)
        return [s.id for s in receivers]
