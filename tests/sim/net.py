"""Simulated TCP between simulated hosts: ordered streams, delays, partitions, resets.

ftds runs over TCP, so the network keeps TCP's promises and breaks only what TCP lets break:

- a connection's bytes arrive in order, each write after a seeded delay (jitter reorders
  traffic *across* connections, never inside one);
- a partition (one-way or both ways, between two hosts) holds the bytes sent across it, as
  TCP retransmission would, and delivers them if it heals before anyone gives up; the sender's
  write buffer grows meanwhile (``get_write_buffer_size``), and a connect across it hangs until
  the caller's timeout;
- a reset (a dropped link, a killed process) reaches the other side after the delay, or when
  the partition between them heals;
- a connect to a port nobody listens on is refused after one round trip.

Loss inside a stream does not exist over TCP (it becomes delay or a reset) and duplication
happens above it: clients send each request to every replica and again after a failover, and
the fault schedule sends reused request ids (see ``sim.schedule``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .loop import Node, SimLoop, current_node

KERNEL_BUFFER = 1 << 20  # bytes a sender may have in flight before its write buffer grows
CLOSE, RESET, ESTABLISHED = "close", "reset", "established"


@dataclass(eq=False)
class Pipe:
    """One direction of one connection."""

    src: Endpoint
    dst: Endpoint
    last_at: float = 0.0  # delivery time of the last item (order is kept)
    held: list[Any] = field(default_factory=list)  # sent while partitioned
    in_flight: int = 0  # bytes scheduled and not yet taken by the receiver


class Endpoint(asyncio.Transport):
    """One side of a simulated connection, owned by one node."""

    def __init__(self, net: Network, node: Node, local: tuple[str, int],
                 remote: tuple[str, int]) -> None:
        super().__init__()
        self.net = net
        self.node = node
        self.local = local
        self.remote = remote
        self.protocol: asyncio.Protocol | None = None
        self.out: Pipe | None = None
        self.closing = False
        self.lost = False

    # -- asyncio.Transport -----------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.remote, "sockname": self.local}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or not data:
            return
        self.net.transmit(self, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_write_buffer_size(self) -> int:
        if self.out is None:
            return 0
        queued = self.out.in_flight + sum(len(x) for x in self.out.held if isinstance(x, bytes))
        return max(0, queued - KERNEL_BUFFER)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.closing

    def close(self) -> None:
        self._end(CLOSE)

    def abort(self) -> None:
        self._end(RESET)

    def _end(self, how: str) -> None:
        if self.closing:
            return
        self.closing = True
        if self.net.inert:
            return
        self.net.transmit(self, how)
        self.net.loop.call_soon(self.lost_now, None, context=self.node.ctx)

    # -- the network's side ----------------------------------------------------------------
    def lost_now(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.closing = True
        self.net.forget(self)
        if self.protocol is not None:
            self.protocol.connection_lost(exc)


class Listener:
    def __init__(self, net: Network, node: Node, addr: tuple[str, int],
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self.net = net
        self.node = node
        self.addr = addr
        self.factory = factory
        self.open = True

    # the parts of asyncio.Server the daemons use
    def close(self) -> None:
        if self.open:
            self.open = False
            self.net.listeners.pop(self.addr, None)

    async def wait_closed(self) -> None:
        return None

    def is_serving(self) -> bool:
        return self.open


class Network:
    def __init__(self, loop: SimLoop, rng: random.Random, hosts: dict[str, str]) -> None:
        """``hosts``: address -> host name (a host may run several nodes)."""
        self.loop = loop
        self.rng = rng
        self.hosts = hosts
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.endpoints: dict[Node, list[Endpoint]] = {}
        self.blocked: set[tuple[str, str]] = set()  # (from host, to host)
        self.stuck: dict[Pipe, None] = {}  # pipes holding what a partition stopped, in order
        self.delay = (0.0001, 0.0005)  # seconds, uniform jitter; a run may widen it
        # Each direction between two hosts has its own base latency (from the run's seed):
        # one backup is always a little behind another, as on a real network.
        self.base: dict[tuple[str, str], float] = {}
        self.base_max = 0.0
        self.ports = itertools.count(40000)
        self.inert = False  # the world ended: nothing is sent any more

    def host_of(self, addr: str) -> str:
        return self.hosts.get(addr, addr)

    def address_of(self, host: str) -> str:
        for addr, name in self.hosts.items():
            if name == host:
                return addr
        raise KeyError(host)

    def flush(self) -> None:
        """Deliver, in order, what partitions held on every link that is no longer cut."""
        for pipe in list(self.stuck):
            if not self._blocked(pipe):
                del self.stuck[pipe]
                held, pipe.held = pipe.held, []
                for item in held:
                    self._schedule(pipe, item)

    def _blocked(self, pipe: Pipe) -> bool:
        return (pipe.src.node.host, pipe.dst.node.host) in self.blocked

    def _latency(self, src: str = "", dst: str = "") -> float:
        base = self.base.get((src, dst))
        if base is None:
            base = self.base[(src, dst)] = self.rng.uniform(0.0, self.base_max)
        return base + self.rng.uniform(*self.delay)

    # -- sockets ---------------------------------------------------------------------------
    def listen(self, factory: Callable[[], asyncio.Protocol], addr: str, port: int) -> Listener:
        node = current_node()
        assert node is not None, "only a simulated process listens"
        key = (addr, port)
        if key in self.listeners:
            raise OSError(98, f"[Errno 98] address already in use: {addr}:{port}")
        listener = Listener(self, node, key, factory)
        self.listeners[key] = listener
        return listener

    async def connect(self, factory: Callable[[], asyncio.Protocol], addr: str,
                      port: int) -> tuple[asyncio.Transport, asyncio.Protocol]:
        node = current_node()
        assert node is not None, "only a simulated process connects"
        src_host, dst_host = node.host, self.host_of(addr)
        if (src_host, dst_host) in self.blocked or (dst_host, src_host) in self.blocked:
            await self.loop.create_future()  # SYNs lost: hangs until the caller's timeout
        await asyncio.sleep(self._latency() * 2)
        listener = self.listeners.get((addr, port))
        if listener is None or not listener.open or not listener.node.alive:
            raise ConnectionRefusedError(111, f"[Errno 111] connection refused: {addr}:{port}")
        mine = Endpoint(self, node, (self.address_of(src_host), next(self.ports)), (addr, port))
        theirs = Endpoint(self, listener.node, (addr, port), mine.local)
        mine.out, theirs.out = Pipe(mine, theirs), Pipe(theirs, mine)
        for ep in (mine, theirs):
            self.endpoints.setdefault(ep.node, []).append(ep)
        mine.protocol = factory()
        established = self.loop.create_future()
        mine.waiter = established  # type: ignore[attr-defined]
        self.loop.call_soon(self._accept, listener, theirs, context=listener.node.ctx)
        await established  # the protocol saw connection_made when the handshake arrived
        return mine, mine.protocol

    def _accept(self, listener: Listener, ep: Endpoint) -> None:
        if not listener.open:
            self.transmit(ep, RESET)
            return
        ep.protocol = listener.factory()
        ep.protocol.connection_made(ep)
        self.transmit(ep, ESTABLISHED)

    # -- delivery --------------------------------------------------------------------------
    def transmit(self, src: Endpoint, item: Any) -> None:
        pipe = src.out
        if pipe is None or self.inert:
            return
        if pipe.held or self._blocked(pipe):
            pipe.held.append(item)
            self.stuck[pipe] = None
            return
        self._schedule(pipe, item)

    def _schedule(self, pipe: Pipe, item: Any) -> None:
        at = max(self.loop.time() + self._latency(pipe.src.node.host, pipe.dst.node.host),
                 pipe.last_at + 1e-6)
        pipe.last_at = at
        if isinstance(item, bytes):
            pipe.in_flight += len(item)
        self.loop.call_at(at, self._deliver, pipe, item, context=pipe.dst.node.ctx)

    def _deliver(self, pipe: Pipe, item: Any) -> None:
        dst = pipe.dst
        if isinstance(item, bytes):
            pipe.in_flight -= len(item)
            if not dst.lost and not dst.closing and dst.protocol is not None:
                dst.protocol.data_received(item)
        elif item == ESTABLISHED:
            waiter = getattr(dst, "waiter", None)
            if waiter is None or waiter.done() or dst.closing:  # the caller gave up meanwhile
                dst.lost = dst.closing = True
                self.forget(dst)
                self.transmit(dst, RESET)
                return
            assert dst.protocol is not None
            dst.protocol.connection_made(dst)
            waiter.set_result(None)
        elif item == CLOSE:
            if not dst.lost and dst.protocol is not None:
                dst.protocol.eof_received()
            self._drop_conn(dst, None)
        else:
            waiter = getattr(dst, "waiter", None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionResetError(104, "connection reset by peer"))
            self._drop_conn(dst, ConnectionResetError(104, "connection reset by peer"))

    def _drop_conn(self, ep: Endpoint, exc: Exception | None) -> None:
        if ep.lost:
            return
        if not ep.closing:
            ep.closing = True
            self.transmit(ep, CLOSE)  # our side closes too, as asyncio does on EOF
        ep.lost_now(exc)

    def forget(self, ep: Endpoint) -> None:
        endpoints = self.endpoints.get(ep.node)
        if endpoints is not None and ep in endpoints:
            endpoints.remove(ep)

    # -- faults ----------------------------------------------------------------------------
    def kill(self, node: Node) -> None:
        """The process is gone: its listeners close and the kernel resets its connections."""
        for listener in list(self.listeners.values()):
            if listener.node is node:
                listener.close()
        for ep in self.endpoints.pop(node, []):
            if not ep.lost:
                ep.lost = ep.closing = True
                if ep.out is not None:
                    ep.out.held = [x for x in ep.out.held if x not in (CLOSE, RESET)]
                self.transmit(ep, RESET)

    def reset_some(self, fraction: float) -> int:
        """Reset a seeded share of the open connections (a flaky switch)."""
        count = 0
        for endpoints in list(self.endpoints.values()):
            for ep in list(endpoints):
                if not ep.closing and ep.protocol is not None and self.rng.random() < fraction:
                    self.loop.call_soon(ep.abort, context=ep.node.ctx)
                    count += 1
        return count
