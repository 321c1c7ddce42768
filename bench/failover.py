"""Failover like with like: the leader (primary, master) crashed (kill -9) or hung (SIGSTOP).

Each trial starts a fresh system, waits until its leader is stable, runs a probe of
``SENDERS`` one-at-a-time writers for a moment, then injects the fault and measures the time
from the fault to the first write acknowledged by the *new* leader, the writers retrying:
- ftds passive: its client (every request to every replica, retransmitted when a replica
  announces a new view); an acknowledgement from a replica other than the old primary;
- Redis+Sentinel: SET + ``WAIT N//2`` for N nodes, a majority of the copies as Raft's (with 3
  nodes ``WAIT 1``: the new master has one replica left, so 2 of 3 copies, as ftds's ready set
  and Raft's majority after one loss); on any failure or after ``ATTEMPT``
  seconds the writer redials the master the Sentinels name, and a watcher asks them every
  10 ms (at least as soon as their ``+switch-master`` message) and moves writers at once;
- PySyncObj (batching off, its fastest acknowledgement): writers start on the leader and move
  to the next node on any failure or after ``ATTEMPT`` seconds (followers forward to the
  leader); an acknowledgement in a Raft term after the one at the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from . import resp
from .systems import Ftds, PySyncObj, Redis, System, settle

SENDERS = 4
ATTEMPT = 0.1  # seconds before a Redis or PySyncObj writer gives up on an attempt
PAUSE = 0.002  # between a writer's writes: a light probe, not a load
FAULTS = {"crash": signal.SIGKILL, "hang": signal.SIGSTOP}


@dataclass
class Probe:
    acks: list[tuple[float, Hashable]] = field(default_factory=list)  # (when, acknowledged by)
    errors: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def first_new(self, t0: float, is_new: Callable[[Hashable], bool]) -> float | None:
        return first_new(self.acks, t0, is_new)


def first_new(acks: list[tuple[float, Hashable]], t0: float,
              is_new: Callable[[Hashable], bool]) -> float | None:
    """When the first acknowledgement after ``t0`` by a new leader came (None: none yet)."""
    times = [t for t, who in acks if t > t0 and is_new(who)]
    return min(times) if times else None


async def ftds_writers(system: Ftds, probe: Probe) -> tuple[list[asyncio.Task[None]], Any]:
    from ftds.client import Client

    client = Client(system.config, system.key, f"F{os.getpid()}{time.monotonic_ns()}",
                    trace=False)
    await client.start()
    await client.wait_connected(10)

    async def writer(i: int) -> None:
        session = client.session(f"{client.name}.{i}")
        n = 0
        while not probe.stop.is_set():
            n += 1
            reply = await session.call({"op": "put", "key": f"p{i}", "value": n})
            probe.acks.append((time.monotonic(), reply.get("from")))
            await asyncio.sleep(PAUSE)

    return [asyncio.create_task(writer(i)) for i in range(SENDERS)], client.close


def majority_wait(nodes: int) -> int:
    """The WAIT numreplicas of a failover writer: the master and these many replicas make a
    majority of ``nodes`` copies (1 of 2 replicas left with 3 nodes, 2 of 4 with 5)."""
    return nodes // 2


async def redis_writers(system: Redis, probe: Probe, master: int
                        ) -> tuple[list[asyncio.Task[None]], Any]:
    state = {"master": master}
    conns: dict[int, resp.RespConn] = {}
    wait = majority_wait(len(system.ports))

    async def ask_sentinels() -> None:
        k = 0
        while not probe.stop.is_set():
            port = system.sentinel_ports[k % len(system.sentinel_ports)]
            try:
                conn = await resp.open_conn("127.0.0.1", port, ATTEMPT)
                while not probe.stop.is_set():
                    async with asyncio.timeout(ATTEMPT):
                        got = await conn.call("SENTINEL", "get-master-addr-by-name",
                                              Redis.MASTER)
                    if isinstance(got, list) and len(got) == 2:
                        named = int(resp.text(got[1]))
                        if named != state["master"]:
                            state["master"] = named
                            for c in list(conns.values()):  # move every writer at once
                                c.abort(ConnectionResetError("master moved"))
                    await asyncio.sleep(0.01)
            except (OSError, TimeoutError, ValueError):
                k += 1
                await asyncio.sleep(0.01)

    async def writer(i: int) -> None:
        n = 0
        while not probe.stop.is_set():
            n += 1
            port = state["master"]
            try:
                conn = conns.get(i)
                if conn is None or conn.closed:
                    conn = conns[i] = await resp.open_conn("127.0.0.1", port, ATTEMPT)
                    conn.port = port  # type: ignore[attr-defined]
                set_done, wait_done = conn.call_many(("SET", f"p{i}", n),
                                                     ("WAIT", wait, int(ATTEMPT * 1000)))
                async with asyncio.timeout(ATTEMPT * 2):
                    reply = await set_done
                    got = await wait_done
                if isinstance(reply, resp.RespError) or isinstance(got, resp.RespError):
                    kind = (reply if isinstance(reply, resp.RespError) else got).kind
                    raise ConnectionError(kind)
                if not isinstance(got, int) or got < wait:
                    probe.errors["wait_short"] += 1
                    continue
                probe.acks.append((time.monotonic(), conn.port))  # type: ignore[attr-defined]
                await asyncio.sleep(PAUSE)
            except (OSError, TimeoutError) as exc:
                probe.errors[type(exc).__name__] += 1
                dead = conns.pop(i, None)
                if dead is not None:
                    dead.abort(ConnectionResetError("retry"))
                await asyncio.sleep(0.005)

    async def close() -> None:
        for c in conns.values():
            c.abort(ConnectionResetError("done"))

    tasks = [asyncio.create_task(writer(i)) for i in range(SENDERS)]
    tasks.append(asyncio.create_task(ask_sentinels()))
    return tasks, close


async def pysyncobj_writers(system: PySyncObj, probe: Probe, leader_front: int
                            ) -> tuple[list[asyncio.Task[None]], Any]:
    conns: dict[int, resp.RespConn] = {}

    async def writer(i: int) -> None:
        node = system.front.index(leader_front)
        n = 0
        while not probe.stop.is_set():
            n += 1
            try:
                conn = conns.get(i)
                if conn is None or conn.closed:
                    conn = conns[i] = await resp.open_conn("127.0.0.1", system.front[node],
                                                           ATTEMPT)
                async with asyncio.timeout(ATTEMPT):
                    reply = await conn.call("SET", f"p{i}", n)
                if isinstance(reply, resp.RespError):
                    raise ConnectionError(reply.kind)
                probe.acks.append((time.monotonic(), reply))
                await asyncio.sleep(PAUSE)
            except (OSError, TimeoutError) as exc:
                probe.errors[type(exc).__name__] += 1
                dead = conns.pop(i, None)
                if dead is not None:
                    dead.abort(ConnectionResetError("retry"))
                node = (node + 1) % len(system.front)  # the next node forwards to the leader
                await asyncio.sleep(0.005)

    async def close() -> None:
        for c in conns.values():
            c.abort(ConnectionResetError("done"))

    return [asyncio.create_task(writer(i)) for i in range(SENDERS)], close


async def trial(system: System, fault: str, warm: float = 1.0,
                limit: float = 30.0) -> dict[str, Any]:
    """One fault on a started system: milliseconds from the fault to the first
    acknowledgement by the new leader (NaN if none within ``limit``)."""
    leader = await settle(system.leader)
    probe = Probe()
    is_new: Callable[[Hashable], bool]
    if isinstance(system, Ftds):
        tasks, close = await ftds_writers(system, probe)
        old = leader[0]  # type: ignore[index]
        is_new = lambda who: who != old  # noqa: E731
    elif isinstance(system, Redis):
        tasks, close = await redis_writers(system, probe, leader)  # type: ignore[arg-type]
        is_new = lambda who: who != leader  # noqa: E731
    elif isinstance(system, PySyncObj):
        front = system.front_of(leader[0])  # type: ignore[index]
        tasks, close = await pysyncobj_writers(system, probe, front)
        term0 = leader[1]  # type: ignore[index]
        is_new = lambda who: isinstance(who, int) and who > term0  # noqa: E731
    else:
        raise TypeError(system)
    pid = system.leader_pid(leader)
    result: dict[str, Any] = {"system": system.name, "fault": fault, "leader": str(leader)}
    try:
        await asyncio.sleep(warm)
        result["acks_before"] = len(probe.acks)
        t0 = time.monotonic()
        os.kill(pid, FAULTS[fault])
        first = None
        while first is None and time.monotonic() - t0 < limit:
            await asyncio.sleep(0.002)
            first = probe.first_new(t0, is_new)
        result["ms"] = (first - t0) * 1000 if first is not None else float("nan")
        if first is None:
            result["error"] = f"no acknowledgement by a new leader within {limit:g}s"
    finally:
        probe.stop.set()
        if fault == "hang":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), 5)
    result["errors"] = dict(probe.errors)
    return result


def tunables(nodes: int = 3) -> dict[str, str]:
    """The detection and lease settings in force, as the report states them."""
    from ftds.config import Tunables

    from .systems import PYSYNCOBJ_TIMEOUTS, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS
    t = Tunables()
    return {
        "ftds passive": f"heartbeat {t.heartbeat_interval * 1000:g} ms x {t.heartbeat_misses} "
                        f"misses (LFD), lease {t.lease * 1000:g} ms (+100 ms margin), "
                        f"client request_timeout {t.request_timeout:g} s",
        "ftds passive fenced": "as ftds passive, with tunables.fence_hung_primary: the LFD "
                               "kills a hung primary and reports a crash (no lease wait)",
        "PySyncObj batch off": f"election timeout {PYSYNCOBJ_TIMEOUTS[0]:g}-"
                               f"{PYSYNCOBJ_TIMEOUTS[1]:g} s (raftMinTimeout-raftMaxTimeout, "
                               "defaults), appendEntriesUseBatch off",
        "Redis+Sentinel": f"{nodes} Sentinels, quorum {nodes // 2 + 1}, "
                          f"down-after-milliseconds {SENTINEL_DOWN_AFTER_MS}, failover-timeout "
                          f"{SENTINEL_FAILOVER_TIMEOUT_MS} ms, parallel-syncs "
                          f"{max(1, nodes - 2)}; failover writers WAIT "
                          f"{majority_wait(nodes)}",
        "writers": f"{SENDERS} one-at-a-time writers; Redis/PySyncObj attempt timeout "
                   f"{ATTEMPT * 1000:g} ms",
    }
