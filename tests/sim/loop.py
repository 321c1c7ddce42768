"""A deterministic asyncio event loop: virtual time, simulated processes, no real I/O.

The loop runs ftds's own daemons (replica, LFD, GFD, RM) and clients, unchanged, in one thread.
Time is virtual: when nothing is ready to run, the clock jumps to the next timer, so a run of
minutes of cluster time takes a fraction of that in CPU and never depends on the machine's
speed. Sockets are replaced by :mod:`sim.net`'s simulated TCP.

Each simulated process is a :class:`Node`. Every callback the loop runs carries the context it
was scheduled from, and the context names its node: that is how the loop freezes a paused
process (SIGSTOP: its callbacks wait, its clock does not) and makes a killed one vanish
(kill -9: none of its code ever runs again; its connections are reset by "the kernel").

Determinism: one thread, callbacks in FIFO order, timers ordered by (time, order of
scheduling), every random choice from the run's seed, and no iteration over identity hashes
(``wire.Conn`` hashes by creation order here). String hashes depend on ``PYTHONHASHSEED``;
the runner fixes it so a seed replays exactly in a new process too.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import contextvars
import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

NODE: contextvars.ContextVar[Node | None] = contextvars.ContextVar("sim_node", default=None)
EPOCH_START = 1_700_000_000.0  # the wall clock of virtual time 0


class Deadlock(RuntimeError):
    """Nothing ready and no timer: the simulation cannot go on."""


@dataclass(eq=False)
class Node:
    """One simulated process on one simulated host."""

    name: str
    host: str
    pid: int
    alive: bool = True
    paused: bool = False
    held: list[asyncio.Handle] = field(default_factory=list)
    ctx: contextvars.Context = field(default_factory=contextvars.Context)
    obj: Any = None  # the daemon object, for the cluster's checks

    def __post_init__(self) -> None:
        self.ctx.run(NODE.set, self)

    def __repr__(self) -> str:
        return f"<{self.name}@{self.host} pid {self.pid}>"


def current_node() -> Node | None:
    return NODE.get()


class SimLoop(asyncio.base_events.BaseEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._clock = start
        # Timers as (when, order, handle): ties run in the order they were set, and the heap
        # compares tuples in C (asyncio's TimerHandle.__lt__ is Python, and hot here).
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._timer_order = itertools.count()
        self.errors: list[dict[str, Any]] = []
        # Whose task each is, by id: asyncio reports a task destroyed while pending from its
        # __del__, when a weak reference to it is already cleared. Finished tasks drop out.
        self.task_nodes: dict[int, Node] = {}
        self.set_exception_handler(self._on_error)

    # -- time ------------------------------------------------------------------------------
    def time(self) -> float:
        return self._clock

    # -- the loop ---------------------------------------------------------------------------
    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._timer_order), timer))
        timer._scheduled = True
        return timer

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # dropped when it comes due

    def _run_once(self) -> None:
        timers = self._timers
        while timers and timers[0][2]._cancelled:
            heapq.heappop(timers)[2]._scheduled = False
        if not self._ready and not self._stopping:
            if not timers:
                raise Deadlock("no callback ready and no timer set")
            self._clock = max(self._clock, timers[0][0])
        end = self._clock + self._clock_resolution
        while timers and timers[0][0] < end:
            handle = heapq.heappop(timers)[2]
            handle._scheduled = False
            self._ready.append(handle)
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if handle._cancelled:
                continue
            node = handle._context.get(NODE) if handle._context is not None else None
            if node is not None:
                if not node.alive:
                    continue  # its process is gone: nothing of it runs again
                if node.paused:
                    node.held.append(handle)
                    continue
            handle._run()

    def _write_to_self(self) -> None:  # only call_soon_threadsafe; the simulation has no threads
        raise RuntimeError("threads are not simulated")

    def _process_events(self, event_list: Any) -> None:  # pragma: no cover - no selector
        pass

    # -- processes ---------------------------------------------------------------------------
    def create_task(self, coro: Any, *, name: str | None = None,
                    context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = super().create_task(coro, name=name, context=context)
        node = context.get(NODE) if context is not None else NODE.get()
        if node is not None:
            self.task_nodes[id(task)] = node
            task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self.task_nodes.pop(id(task), None)

    def resume(self, node: Node) -> None:
        node.paused = False
        held, node.held = node.held, []
        self._ready.extend(held)

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        node = NODE.get()
        task = context.get("task")
        if task is not None:
            owner = self.task_nodes.pop(id(task), None)
            if owner is not None:
                node = owner
                if not owner.alive:
                    return  # a killed process's task, collected: nothing ran, nothing leaked
        exc = context.get("exception")
        self.errors.append({"at": self._clock, "node": node.name if node else None,
                            "message": context.get("message", ""),
                            "exception": f"{exc.__class__.__name__}: {exc}" if exc else ""})

    # -- sockets: handed to the simulated network ------------------------------------------
    network: Any = None

    async def create_connection(self, protocol_factory: Callable[[], asyncio.Protocol],
                                host: str | None = None, port: int | None = None,
                                **kwargs: Any) -> tuple[asyncio.Transport, asyncio.Protocol]:
        assert host is not None and port is not None
        return await self.network.connect(protocol_factory, host, port)

    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol],
                            host: Any = None, port: int | None = None,
                            **kwargs: Any) -> Any:
        assert isinstance(host, str) and port is not None
        return self.network.listen(protocol_factory, host, port)


@contextmanager
def virtual_world(loop: SimLoop, rng_bytes: Callable[[int], bytes]) -> Iterator[None]:
    """Inside: the time module reads the loop's clock, os.urandom the run's seed, and
    os.getpid the running node's pid (the LFD checks its replica's pid to confirm a crash)."""
    saved = (time.time, time.monotonic, time.time_ns, time.monotonic_ns, time.perf_counter,
             os.urandom, os.getpid)
    real_getpid = os.getpid

    def wall() -> float:
        return EPOCH_START + loop._clock

    def getpid() -> int:
        node = NODE.get()
        return node.pid if node is not None else real_getpid()

    time.time = wall
    time.monotonic = loop.time
    time.perf_counter = loop.time
    time.time_ns = lambda: int(wall() * 1e9)
    time.monotonic_ns = lambda: int(loop._clock * 1e9)
    os.urandom = rng_bytes
    os.getpid = getpid
    try:
        yield
    finally:
        (time.time, time.monotonic, time.time_ns, time.monotonic_ns, time.perf_counter,
         os.urandom, os.getpid) = saved


@contextmanager
def ordered_hashes(*classes: type) -> Iterator[None]:
    """Objects of ``classes`` hash by creation order, not by address, so sets of them iterate
    the same way in every run of a seed."""
    counter = itertools.count()
    saved = {cls: cls.__dict__.get("__hash__") for cls in classes}

    def stable_hash(self: Any) -> int:
        h = self.__dict__.get("_sim_hash")
        if h is None:
            h = self.__dict__["_sim_hash"] = next(counter)
        return h

    for cls in classes:
        cls.__hash__ = stable_hash  # type: ignore[method-assign]
    try:
        yield
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.__hash__  # type: ignore[misc]
            else:
                cls.__hash__ = original  # type: ignore[method-assign]
