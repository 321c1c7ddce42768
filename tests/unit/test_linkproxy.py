"""The chaos run's link proxy: bytes flow both ways; a cut holds one direction only; a heal
delivers what was held, in order; a connection dialed during a cut reaches nobody until the
heal; a held buffer past its bound resets the connection."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from ftds_tools.chaos.linkproxy import HOOK_DIR, Link, LinkProxy


class Listener:
    """Host b's listener: records what it receives per connection, echoes nothing by itself."""

    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.accepted = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns.append((reader, writer))
        self.accepted.set()

    async def close(self) -> None:
        for _, writer in self.conns:
            writer.close()
        self.server.close()


async def setup(hold_limit: int = 1 << 20):
    listener = Listener()
    port = await listener.start()
    proxy = LinkProxy({"a": [], "b": [("127.0.0.1", port)]}, hold_limit=hold_limit)
    await proxy.start()
    via = proxy.routes[Link("a", "b", ("127.0.0.1", port))]
    return listener, proxy, via


async def nothing(reader: asyncio.StreamReader, wait: float = 0.2) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), wait)
    except TimeoutError:
        return True
    raise AssertionError(f"received {data!r} through a cut")


async def dial(via: int, listener: Listener):
    reader, writer = await asyncio.open_connection("127.0.0.1", via)
    await asyncio.wait_for(listener.accepted.wait(), 2)
    listener.accepted.clear()
    return reader, writer, *listener.conns[-1]


def test_bytes_flow_both_ways_and_only_a_to_b_routes_exist():
    async def main() -> None:
        listener, proxy, via = await setup()
        assert [(k.src, k.dst) for k in proxy.routes] == [("a", "b")]
        a_reader, a_writer, b_reader, b_writer = await dial(via, listener)
        a_writer.write(b"hello b")
        assert await asyncio.wait_for(b_reader.readexactly(7), 2) == b"hello b"
        b_writer.write(b"hello a")
        assert await asyncio.wait_for(a_reader.readexactly(7), 2) == b"hello a"
        a_writer.close()  # a close travels too
        assert await asyncio.wait_for(b_reader.read(), 2) == b""
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_a_cut_holds_one_direction_and_the_heal_delivers_in_order():
    async def main() -> None:
        listener, proxy, via = await setup()
        a_reader, a_writer, b_reader, b_writer = await dial(via, listener)
        proxy.cut("a", "b")
        for n in range(100):
            a_writer.write(b"%03d," % n)
        await a_writer.drain()
        assert await nothing(b_reader)
        b_writer.write(b"still open")  # the other direction flows
        assert await asyncio.wait_for(a_reader.readexactly(10), 2) == b"still open"
        assert proxy.held_bytes() == 400
        proxy.heal("a", "b")
        a_writer.write(b"after")
        expected = b"".join(b"%03d," % n for n in range(100)) + b"after"
        assert await asyncio.wait_for(b_reader.readexactly(len(expected)), 2) == expected
        assert proxy.held_bytes() == 0
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_a_connection_dialed_during_a_cut_reaches_nobody_until_the_heal():
    async def main() -> None:
        listener, proxy, via = await setup()
        proxy.cut("a", "b")
        a_reader, a_writer = await asyncio.open_connection("127.0.0.1", via)  # accepted
        a_writer.write(b"hello")
        await asyncio.sleep(0.2)
        assert not listener.conns, "b saw a connection dialed through a cut"
        assert proxy.connections() == 1
        proxy.heal_all()
        await asyncio.wait_for(listener.accepted.wait(), 2)
        b_reader, b_writer = listener.conns[0]
        assert await asyncio.wait_for(b_reader.readexactly(5), 2) == b"hello"
        b_writer.write(b"hi")
        assert await asyncio.wait_for(a_reader.readexactly(2), 2) == b"hi"
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_a_cut_of_b_to_a_holds_replies_and_a_held_close():
    async def main() -> None:
        listener, proxy, via = await setup()
        a_reader, a_writer, b_reader, b_writer = await dial(via, listener)
        proxy.cut("b", "a")
        a_writer.write(b"request")  # a's way is open
        assert await asyncio.wait_for(b_reader.readexactly(7), 2) == b"request"
        b_writer.write(b"reply")
        b_writer.close()  # the close is held behind the bytes
        assert await nothing(a_reader)
        proxy.heal("b", "a")
        assert await asyncio.wait_for(a_reader.read(), 2) == b"reply"  # then EOF
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_held_bytes_past_the_bound_reset_the_connection():
    async def main() -> None:
        listener, proxy, via = await setup(hold_limit=64 * 1024)
        a_reader, a_writer, b_reader, _ = await dial(via, listener)
        proxy.cut("a", "b")
        a_writer.write(b"x" * 32 * 1024)
        await asyncio.sleep(0.1)
        assert proxy.connections() == 1  # under the bound: held
        a_writer.write(b"x" * 64 * 1024)
        assert await asyncio.wait_for(a_reader.read(), 2) == b""  # reset
        assert proxy.connections() == 0 and proxy.resets_over_limit == 1
        proxy.heal_all()
        assert await asyncio.wait_for(b_reader.read(), 2) == b""  # b got nothing, then the end
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_reset_aborts_the_connections_between_two_hosts():
    async def main() -> None:
        listener, proxy, via = await setup()
        a_reader, _, b_reader, _ = await dial(via, listener)
        assert proxy.reset("b", "a") == 1
        assert await asyncio.wait_for(a_reader.read(), 2) == b""
        assert await asyncio.wait_for(b_reader.read(), 2) == b""
        await listener.close()
        await proxy.close()
    asyncio.run(main())


def test_the_hook_sends_a_daemons_dials_to_its_hosts_proxy(tmp_path):
    routes = {"routes": {"h2": {"127.0.0.1:7101": ["127.0.0.1", 40001]}, "m": {}}}
    (tmp_path / "links.json").write_text(json.dumps(routes))
    probe = ("import sys, ftds.wire as w, sitecustomize as s\n"
             "sys.argv = ['ftds', *sys.argv[1:]]\n"
             "print(w.connect.__module__, s._route('127.0.0.1', 7101),"
             " s._route('127.0.0.1', 7102))\n")
    env = {**os.environ, "FTDS_LINKS": str(tmp_path / "links.json"),
           "PYTHONPATH": str(HOOK_DIR)}
    for argv, expected in ((["replica", "--config", "x", "--id", "S2"], "[127.0.0.1, 40001] None"),
                           (["lfd", "--id=S2"], "[127.0.0.1, 40001] None"),
                           (["rm", "--config", "x"], "None None"),
                           (["workload"], "None None")):
        out = subprocess.run([sys.executable, "-c", probe, *argv], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert out.replace("'", "").strip() == f"sitecustomize {expected}", (argv, out)
