"""A PySyncObj node (a replicated key-value map) behind a small RESP front end.

Commands: ``SET key value`` applies a replicated set and answers, once committed, with the Raft
term the node was in (an integer), or ``-ERR <reason>`` when PySyncObj refuses it;
``LEADER`` answers ``[self, leader or nil, term]``; ``PING``. The front end gets the same
event loop (uvloop) and GC settings as the ftds daemons, so the comparison measures the
replication, not a slower front end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import threading
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from .resp import ProtocolError, parse

REASONS = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}


class KV(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf)
        self.__data: dict[bytes, bytes] = {}

    @replicated
    def set(self, key: bytes, value: bytes) -> int:
        self.__data[key] = value
        return len(self.__data)

    def term(self) -> int:
        return int(self._SyncObj__raftCurrentTerm)  # type: ignore[attr-defined]


def bulk(value: str | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class Replies:
    """Replies produced on PySyncObj's thread, written by the event loop in one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.queue: collections.deque[tuple[asyncio.Transport, bytes]] = collections.deque()
        self.scheduled = False

    def put(self, transport: asyncio.Transport, data: bytes) -> None:
        with self.lock:
            self.queue.append((transport, data))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        with self.lock:
            items = list(self.queue)
            self.queue.clear()
            self.scheduled = False
        for transport, data in items:
            if not transport.is_closing():
                transport.write(data)


class FrontEnd(asyncio.Protocol):
    def __init__(self, kv: KV, replies: Replies) -> None:
        self.kv = kv
        self.replies = replies
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while True:
                got = parse(self.buf, pos)
                if got is None:
                    break
                command, pos = got
                self.handle(command)
        except ProtocolError:
            assert self.transport is not None
            self.transport.abort()
            return
        del self.buf[:pos]

    def handle(self, command: Any) -> None:
        assert self.transport is not None
        if not isinstance(command, list) or not command or not isinstance(command[0], bytes):
            self.transport.write(b"-ERR expected a command\r\n")
            return
        name = command[0].upper()
        if name == b"SET" and len(command) == 3:
            transport = self.transport

            def done(result: object, error: object) -> None:
                if error == FAIL_REASON.SUCCESS:
                    reply = b":%d\r\n" % self.kv.term()
                else:
                    reply = b"-ERR %s\r\n" % REASONS.get(error, str(error)).encode()
                self.replies.put(transport, reply)

            self.kv.set(command[1], command[2], callback=done)
        elif name == b"LEADER":
            leader = self.kv._getLeader()
            self.transport.write(b"*3\r\n" + bulk(self.kv.selfNode.id)
                                 + bulk(leader.id if leader is not None else None)
                                 + b":%d\r\n" % self.kv.term())
        elif name == b"PING":
            self.transport.write(b"+PONG\r\n")
        else:
            self.transport.write(b"-ERR unknown command\r\n")


async def serve(args: argparse.Namespace) -> None:
    conf = SyncObjConf(dynamicMembershipChange=False, appendEntriesUseBatch=args.batch)
    kv = KV(args.raft, args.partners, conf)
    loop = asyncio.get_running_loop()
    replies = Replies(loop)
    server = await loop.create_server(lambda: FrontEnd(kv, replies), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raft", required=True, help="this node's Raft address host:port")
    parser.add_argument("--partners", nargs="*", default=[])
    parser.add_argument("--port", type=int, required=True, help="front-end port")
    parser.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True,
                        help="appendEntriesUseBatch (PySyncObj's default: on)")
    args = parser.parse_args()
    gc.freeze()  # the ftds daemons' GC settings (ftds.runloop.tune_gc)
    gc.set_threshold(50_000, 50, 100)
    import uvloop
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
