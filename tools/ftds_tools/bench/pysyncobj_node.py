"""A PySyncObj node (a replicated counter) with a thin TCP front end, for comparison runs.

Front-end protocol: the client sends 8-byte big-endian request ids; for each the node calls the
replicated ``inc`` and answers from its callback with the id and the new value (16 bytes). Request
id 0 asks whether this node is the leader (value 1) or not (0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import struct
import threading

from pysyncobj import SyncObj, SyncObjConf, replicated

REQ = struct.Struct(">Q")
REP = struct.Struct(">Qq")


class Counter(SyncObj):
    def __init__(self, self_addr: str, partners: list[str]) -> None:
        super().__init__(self_addr, partners, SyncObjConf(dynamicMembershipChange=False))
        self.__value = 0

    @replicated
    def inc(self) -> int:
        self.__value += 1
        return self.__value


class FrontEnd(asyncio.Protocol):
    def __init__(self, counter: Counter, loop: asyncio.AbstractEventLoop) -> None:
        self.counter = counter
        self.loop = loop
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.done: collections.deque[bytes] = collections.deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        usable = len(self.buf) - len(self.buf) % REQ.size
        for (rid,) in REQ.iter_unpack(self.buf[:usable]):
            if rid == 0:
                self.transport.write(REP.pack(0, int(self.counter._isLeader())))
                continue
            self.counter.inc(callback=self._callback(rid))
        self.buf = self.buf[usable:]

    def _callback(self, rid: int):
        def done(result: object, error: object) -> None:
            value = result if isinstance(result, int) else -1
            with self.lock:
                self.done.append(REP.pack(rid, value))
                if self.scheduled:
                    return
                self.scheduled = True
            self.loop.call_soon_threadsafe(self._flush)
        return done

    def _flush(self) -> None:
        with self.lock:
            data = b"".join(self.done)
            self.done.clear()
            self.scheduled = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def main(args: argparse.Namespace) -> None:
    counter = Counter(args.raft, args.partners)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FrontEnd(counter, loop), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--raft", required=True, help="this node's raft address host:port")
    parser.add_argument("--partners", nargs="*", default=[])
    parser.add_argument("--port", type=int, required=True, help="front-end port")
    asyncio.run(main(parser.parse_args()))
