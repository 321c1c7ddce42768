"""Link proxies: the embedded cluster's network, host by host, so that the nemesis can cut it.

The embedded cluster runs every daemon on 127.0.0.1, where nothing can be partitioned without
root. So the chaos run gives it a network of its own: each replica with its LFD is a host
``hN`` (as on the lab), the GFD and the RM are the manager host ``m``, and every connection a
daemon of host X dials to a listener of host Y goes through a proxy listener dedicated to the
directed pair X -> Y and that port. The proxy forwards bytes both ways and, per direction:

- ``cut(X, Y)``: bytes from X to Y are held, not delivered. TCP stays up, as when packets are
  dropped; a connection X dials to Y meanwhile is accepted by the proxy, which dials Y only at
  the heal (Y never sees it, as a SYN that is lost). A cut of both directions is two cuts.
- ``heal(X, Y)``: the held bytes are delivered, in order, then everything flows again. A close
  that was held is delivered after them.
- ``reset(X, Y)``: every connection between X and Y is aborted (held bytes dropped).

A held buffer past ``hold_limit`` (16 MiB) aborts its connection, as a real connection would
time out. The daemons reach the proxy through ``linkhook/sitecustomize.py``: with
``FTDS_LINKS`` naming this module's route file, each daemon dials its host's proxy port instead
of a peer host's address; its own listen addresses, and its cluster file, stay as they are.
Clients (the run's workload, the nemesis's status probes) dial the daemons directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftds.config import ClusterConfig

MANAGER = "m"
HOLD_LIMIT = 16 * 1024 * 1024
HOOK_DIR = Path(__file__).with_name("linkhook")


def host_of(daemon: str) -> str:
    """The host a daemon runs on: S2 and LFD2 on h2, the GFD and the RM on m."""
    name = daemon.upper()
    if name in ("RM", "GFD"):
        return MANAGER
    digits = name.removeprefix("LFD").removeprefix("S")
    if not digits.isdigit():
        raise ValueError(f"no host for {daemon!r}")
    return f"h{int(digits)}"


def cluster_hosts(config: ClusterConfig) -> dict[str, list[tuple[str, int]]]:
    """Every host and the addresses its daemons listen on that other hosts dial."""
    hosts: dict[str, list[tuple[str, int]]] = {
        host_of(r.id): [(r.host, r.port), (r.host, r.control_port)] for r in config.replicas}
    hosts[MANAGER] = [(config.gfd.host, config.gfd.port), (config.rm.host, config.rm.port)]
    return hosts


@dataclass(frozen=True)
class Link:
    """Connections host ``src`` dials to ``target``, a listener of host ``dst``."""

    src: str
    dst: str
    target: tuple[str, int]


@dataclass
class _Flow:
    """One direction of one proxied connection: bytes from host ``src`` to host ``dst``."""

    src: str
    dst: str
    out: asyncio.Transport | None = None  # where the bytes go (None: not connected yet)
    held: bytearray = field(default_factory=bytearray)
    ended: bool = False  # its sender closed: delivered once the held bytes are


class _Side(asyncio.Protocol):
    """One socket of a pipe: the dialer's accepted connection, or the proxy's own to Y."""

    def __init__(self, pipe: _Pipe, flow: _Flow) -> None:
        self.pipe = pipe
        self.flow = flow  # the bytes this socket receives travel on this flow
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pipe.proxy._send(self.flow, data, self.pipe)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.ended = True
        self.pipe.proxy._ended(self.pipe, self.flow)

    # The receiver is slow: stop reading from the sender until it catches up.
    def pause_writing(self) -> None:
        other = self.pipe.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.pipe.other(self)
        if other is not None and other.transport is not None:
            with contextlib.suppress(RuntimeError):
                other.transport.resume_reading()


class _Pipe:
    """One connection through the proxy: the dialer's socket and the proxy's socket to Y."""

    def __init__(self, proxy: LinkProxy, link: Link) -> None:
        self.proxy = proxy
        self.link = link
        self.up = _Flow(link.src, link.dst)  # dialer -> listener
        self.down = _Flow(link.dst, link.src)
        self.client = _Side(self, self.up)
        self.server: _Side | None = None
        self.dialing = False
        self.closed = False

    def other(self, side: _Side) -> _Side | None:
        return self.server if side is self.client else self.client

    def flows(self) -> tuple[_Flow, _Flow]:
        return self.up, self.down

    def abort(self) -> None:
        self.closed = True
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self.up.held.clear()
        self.down.held.clear()
        self.proxy._pipes.discard(self)

    def close(self) -> None:
        """Both sockets closed, after what is already written to them."""
        self.closed = True
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.proxy._pipes.discard(self)


class LinkProxy:
    """The proxies of every link of a cluster, in one event loop (see the module's text)."""

    def __init__(self, hosts: dict[str, list[tuple[str, int]]], *,
                 listen_host: str = "127.0.0.1", hold_limit: int = HOLD_LIMIT) -> None:
        self.hosts = hosts
        self.listen_host = listen_host
        self.hold_limit = hold_limit
        self.cuts: set[tuple[str, str]] = set()
        self.routes: dict[Link, int] = {}  # link -> the proxy's port for it
        self.resets_over_limit = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._pipes: set[_Pipe] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for src in self.hosts:
            for dst, targets in self.hosts.items():
                if dst == src:
                    continue
                for target in targets:
                    link = Link(src, dst, target)
                    server = await loop.create_server(
                        lambda link=link: self._accept(link), self.listen_host, 0)
                    self._servers.append(server)
                    self.routes[link] = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:  # dials still under way
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def route_table(self) -> dict[str, Any]:
        """What ``linkhook`` reads: per dialing host, ``host:port`` of a peer -> proxy port."""
        table: dict[str, dict[str, list[Any]]] = {h: {} for h in self.hosts}
        for link, port in self.routes.items():
            table[link.src][f"{link.target[0]}:{link.target[1]}"] = [self.listen_host, port]
        return {"routes": table}

    # --------------------------------------------------------------------- faults ----
    def is_cut(self, src: str, dst: str) -> bool:
        return (src, dst) in self.cuts

    def cut(self, src: str, dst: str) -> None:
        self._known(src, dst)
        self.cuts.add((src, dst))

    def heal(self, src: str, dst: str) -> None:
        self.cuts.discard((src, dst))
        self._release()

    def heal_all(self) -> None:
        self.cuts.clear()
        self._release()

    def reset(self, src: str, dst: str) -> int:
        """Abort every connection between the two hosts (either side dialed); how many."""
        self._known(src, dst)
        doomed = [p for p in self._pipes if {p.link.src, p.link.dst} == {src, dst}]
        for pipe in doomed:
            pipe.abort()
        return len(doomed)

    def held_bytes(self) -> int:
        return sum(len(f.held) for p in self._pipes for f in p.flows())

    def connections(self) -> int:
        return len(self._pipes)

    def _known(self, *hosts: str) -> None:
        for host in hosts:
            if host not in self.hosts:
                raise ValueError(f"unknown host {host!r} (hosts: {', '.join(self.hosts)})")

    # ------------------------------------------------------------------- forwarding ----
    def _accept(self, link: Link) -> asyncio.Protocol:
        pipe = _Pipe(self, link)
        self._pipes.add(pipe)
        if not self.is_cut(link.src, link.dst):
            self._dial(pipe)
        return pipe.client

    def _dial(self, pipe: _Pipe) -> None:
        pipe.dialing = True
        asyncio.get_running_loop().create_task(self._connect(pipe))

    async def _connect(self, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        server = _Side(pipe, pipe.down)
        host, port = pipe.link.target
        try:
            await loop.create_connection(lambda: server, host, port)
        except OSError:
            pipe.abort()  # as a refused connection: the dialer sees it end at once
            return
        if pipe.closed:
            assert server.transport is not None
            server.transport.abort()
            return
        pipe.server = server
        pipe.up.out = server.transport
        pipe.down.out = pipe.client.transport
        self._flush(pipe, pipe.up)
        self._flush(pipe, pipe.down)

    def _send(self, flow: _Flow, data: bytes, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        if flow.out is not None and not self.is_cut(flow.src, flow.dst):
            if flow.out.is_closing():
                return  # its receiver is gone: nothing can deliver it
            if flow.held:
                flow.out.write(bytes(flow.held))
                flow.held.clear()
            flow.out.write(data)
            return
        flow.held += data
        if len(flow.held) > self.hold_limit:
            self.resets_over_limit += 1
            pipe.abort()  # a real connection would have timed out by now

    def _flush(self, pipe: _Pipe, flow: _Flow) -> None:
        if pipe.closed or flow.out is None or self.is_cut(flow.src, flow.dst):
            return
        if flow.held and not flow.out.is_closing():
            flow.out.write(bytes(flow.held))
            flow.held.clear()
        if flow.ended:
            pipe.close()

    def _ended(self, pipe: _Pipe, flow: _Flow) -> None:
        """A socket of the pipe closed: the close travels like the bytes (held while cut)."""
        if pipe.closed:
            return
        if flow.out is None and not pipe.dialing:
            pipe.close()  # nothing of it was ever delivered
            return
        self._flush(pipe, flow)

    def _release(self) -> None:
        for pipe in list(self._pipes):
            if pipe.server is None and not pipe.dialing and not pipe.closed \
                    and not self.is_cut(pipe.link.src, pipe.link.dst):
                self._dial(pipe)
            else:
                for flow in pipe.flows():
                    self._flush(pipe, flow)


class LinkProxyThread:
    """A LinkProxy in an event loop of its own, in a thread of the chaos runner's process.

    The runner is synchronous; every call here returns once the loop has done it, so a cut is
    in force when ``cut`` returns.
    """

    def __init__(self, config: ClusterConfig, *, hold_limit: int = HOLD_LIMIT) -> None:
        self.proxy = LinkProxy(cluster_hosts(config), hold_limit=hold_limit)
        self.hosts = list(self.proxy.hosts)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="linkproxy",
                                        daemon=True)
        self._thread.start()
        self._call(self.proxy.start())

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _do(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)
        return self._call(run())

    def write_routes(self, path: Path) -> Path:
        path.write_text(json.dumps(self.proxy.route_table(), indent=1))
        return path

    def env(self, routes: Path) -> dict[str, str]:
        """The environment a daemon needs to dial through the proxies."""
        paths = [str(HOOK_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"FTDS_LINKS": str(routes.resolve()), "PYTHONPATH": os.pathsep.join(paths)}

    def cut(self, src: str, dst: str) -> None:
        self._do(self.proxy.cut, src, dst)

    def cut_both(self, a: str, others: Iterable[str]) -> None:
        for b in others:
            self.cut(a, b)
            self.cut(b, a)

    def heal(self, src: str, dst: str) -> None:
        self._do(self.proxy.heal, src, dst)

    def heal_all(self) -> None:
        self._do(self.proxy.heal_all)

    def reset(self, src: str, dst: str) -> int:
        return int(self._do(self.proxy.reset, src, dst))

    def cuts(self) -> set[tuple[str, str]]:
        return set(self._do(lambda: set(self.proxy.cuts)))

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
