"""Strangers on a listening port: the pre-hello byte limit, the hello deadline, connection caps.

A real asyncio server on 127.0.0.1 with ``wire.Conn`` and a ``Gate``, and real sockets as the
strangers; other source addresses of the loopback network (127.0.0.2, ...) stand for other hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator

import pytest

from ftds.config import Tunables
from ftds.gate import Gate, Throttle
from ftds.wire import (
    PRE_AUTH_LIMIT,
    Conn,
    FrameDecoder,
    Message,
    WireError,
    encode,
    envelope,
)

KEY = b"k" * 32


def hello() -> bytes:
    return encode(envelope("hello", "C1", 0, {"client": "C1"}), KEY)


def big(size: int) -> bytes:
    return encode(envelope("req", "C1", 0, {"pad": "x" * size}), KEY)


# -- the decoder -----------------------------------------------------------------------------
def test_a_stranger_may_not_announce_more_than_64_kib():
    dec = FrameDecoder(KEY, 16 << 20, pre_auth=True)
    assert dec.feed(struct.pack(">I", PRE_AUTH_LIMIT)) == []  # waits for the rest
    with pytest.raises(WireError) as err:
        FrameDecoder(KEY, 16 << 20, pre_auth=True).feed(struct.pack(">I", PRE_AUTH_LIMIT + 1))
    assert err.value.code == "oversize" and "before hello" in err.value.detail


def test_after_the_hello_the_normal_limit_applies_even_within_one_read():
    dec = FrameDecoder(KEY, 16 << 20, pre_auth=True)
    data = hello() + big(1 << 20)
    first = dec.feed(data)
    assert [m["t"] for m in first] == ["hello"]  # one at a time: the rest is judged later
    dec.authenticated()
    rest = dec.feed(b"")
    assert [m["t"] for m in rest] == ["req"] and dec.buffered == 0


def test_without_a_gate_the_decoder_is_unchanged():
    dec = FrameDecoder(KEY, 16 << 20)
    assert [m["t"] for m in dec.feed(hello() + big(1 << 20) + hello())] == ["hello", "req",
                                                                            "hello"]


# -- a listening port ------------------------------------------------------------------------
class Server:
    """A port whose handler accepts ``hello`` and echoes ``req`` sizes back."""

    def __init__(self, tunables: Tunables) -> None:
        self.tunables = tunables
        self.gate = Gate("test port", lambda: self.tunables)
        self.conns: set[Conn] = set()
        self.port = 0

    def on_message(self, conn: Conn, msg: Message) -> None:
        if conn.role is None:
            if msg["t"] != "hello":
                raise WireError("protocol", "expected hello first")
            conn.role = "client"
            conn.send("welcome", {})
        else:
            conn.send("got", {"size": len(msg.get("pad", ""))})

    def factory(self) -> Conn:
        conn = Conn(KEY, 16 << 20, "S1", on_message=self.on_message,
                    on_close=self.conns.discard, label="client", gate=self.gate)
        self.conns.add(conn)
        return conn


@contextlib.asynccontextmanager
async def serving(**tunables: float) -> AsyncIterator[Server]:
    server = Server(Tunables(**tunables))  # type: ignore[arg-type]
    listener = await asyncio.get_running_loop().create_server(server.factory, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for conn in list(server.conns):
            conn.abort()
        server.gate.close()


async def dial(port: int, source: str = "127.0.0.1"
               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def read_until_closed(reader: asyncio.StreamReader) -> list[Message]:
    dec = FrameDecoder(KEY, 16 << 20)
    out: list[Message] = []
    while data := await reader.read(65536):
        out += dec.feed(data)
    return out


def test_a_hello_followed_at_once_by_a_large_frame_is_served():
    async def main() -> list[Message]:
        async with serving() as server:
            reader, writer = await dial(server.port)
            writer.write(hello() + big(1 << 20))
            dec = FrameDecoder(KEY, 16 << 20)
            got: list[Message] = []
            async with asyncio.timeout(10):
                while len(got) < 2:
                    got += dec.feed(await reader.read(65536))
            writer.close()
            return got

    got = asyncio.run(main())
    assert [m["t"] for m in got] == ["welcome", "got"] and got[1]["size"] == 1 << 20


def test_a_connection_without_hello_is_closed_after_hello_timeout(caplog):
    async def main() -> tuple[float, list[Message], list[Message]]:
        async with serving(hello_timeout=0.3) as server:
            idle_r, idle_w = await dial(server.port, "127.0.0.2")
            half_r, half_w = await dial(server.port, "127.0.0.2")
            half_w.write(struct.pack(">I", 60_000) + b"x" * 30_000)  # half a frame
            ok_r, ok_w = await dial(server.port)
            ok_w.write(hello())
            start = time.monotonic()
            async with asyncio.timeout(10):
                idle, half = await asyncio.gather(read_until_closed(idle_r),
                                                  read_until_closed(half_r))
            took = time.monotonic() - start
            assert not ok_r.at_eof() and server.gate.open == 1  # the one that said hello stays
            for w in (idle_w, half_w, ok_w):
                w.close()
            return took, idle, half

    with caplog.at_level(logging.WARNING, logger="ftds.gate"):
        took, idle, half = asyncio.run(main())
    assert 0.25 < took < 5
    for messages in (idle, half):
        assert [m.get("code") for m in messages] == ["timeout"]
    assert "closing 127.0.0.2:" in caplog.text and "no hello within 0.3 s" in caplog.text


def test_a_stranger_announcing_a_large_frame_is_closed_at_once():
    async def main() -> list[Message]:
        async with serving(hello_timeout=30) as server:
            reader, writer = await dial(server.port)
            writer.write(struct.pack(">I", 16 << 20))
            async with asyncio.timeout(5):
                got = await read_until_closed(reader)
            writer.close()
            return got

    assert [m.get("code") for m in asyncio.run(main())] == ["oversize"]


def test_the_cap_per_source_refuses_at_once_and_logs_it_once(caplog):
    async def main() -> tuple[int, int, int]:
        async with serving(hello_timeout=30, max_conns_per_source=5) as server:
            kept = [await dial(server.port, "127.0.0.2") for _ in range(5)]
            await asyncio.sleep(0.05)
            refused = 0
            for _ in range(20):
                reader, writer = await dial(server.port, "127.0.0.2")
                async with asyncio.timeout(5):
                    with contextlib.suppress(ConnectionResetError):
                        await reader.read()
                refused += 1
                writer.close()
            # another source is still welcome
            reader, writer = await dial(server.port, "127.0.0.3")
            writer.write(hello())
            async with asyncio.timeout(5):
                welcome = FrameDecoder(KEY, 1 << 20).feed(await reader.read(65536))
            assert welcome[0]["t"] == "welcome"
            writer.close()
            for _, w in kept:
                w.close()
            return refused, server.gate.refusals.total, server.gate.by_source["127.0.0.2"]

    with caplog.at_level(logging.WARNING, logger="ftds.gate"):
        refused, total, held = asyncio.run(main())
    assert refused == total == 20 and held == 5
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 1  # one line when it bites; the rest is summed up at the window's end
    assert "max_conns_per_source" in lines[0] and "127.0.0.2" in lines[0]
    summary = [r.getMessage() for r in caplog.records if "connections refused:" in r.getMessage()]
    assert summary and summary[0].startswith("test port: connections refused: 19 more in the last")


def test_the_cap_per_port_counts_every_source():
    async def main() -> tuple[int, int]:
        async with serving(hello_timeout=30, max_conns_per_port=6) as server:
            kept = [await dial(server.port, f"127.0.0.{2 + i % 3}") for i in range(6)]
            reader, writer = await dial(server.port, "127.0.0.9")
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
            writer.close()
            for _, w in kept:
                w.close()
            async with asyncio.timeout(5):
                await asyncio.gather(*(c.closed for c in list(server.conns)))
            return server.gate.refusals.total, server.gate.open

    assert asyncio.run(main()) == (1, 0)


def test_a_throttled_flood_is_summed_up_in_one_line(caplog):
    async def main() -> None:
        throttle = Throttle("port: refused", logging.WARNING, window=0.2, burst=2)
        for i in range(50):
            throttle.event(f"10.0.0.{i % 4}", f"refusing 10.0.0.{i % 4}")
        await asyncio.sleep(0.35)

    with caplog.at_level(logging.WARNING, logger="ftds.gate"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert messages[2].startswith("port: refused: 48 more in the last 200 ms (10.0.0.")
