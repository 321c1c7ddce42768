"""The closed-loop load: C clients, each with one write outstanding, against one system.

Run as its own process (``python -m bench.driver``), so its CPU is the client's alone. Every
client writes its own key (``k<i>``) with an increasing integer:
- ftds: ``put`` through ``ftds.client`` (the C clients are sessions of one ``Client``, which
  is how ftds clients are built: one connection per replica, requests of one loop turn in one
  frame);
- Redis: ``SET`` and ``WAIT <n> <timeout>`` on the master, one connection per client (WAIT
  counts a connection's writes); the two commands of one write leave in one segment;
- PySyncObj: ``SET`` to the leader's front end, one connection per client, answered once
  committed.
After ``--warmup`` seconds, operations are counted by their completion time inside the
``--duration`` window; refusals, timeouts and errors are counted by kind, never fatal. The CPU
of this process and of every ``--pid`` is read from /proc at the window's edges. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable

from . import resp
from .stats import Window, read_cpu

Op = Callable[[int], Awaitable[str | None]]  # the n-th write; None on success, else the kind


class RespClients:
    """One connection per client; a connection with a call overdue is dropped and redialled
    (a late reply would otherwise answer the next call)."""

    def __init__(self, port: int, clients: int, timeout: float) -> None:
        self.port = port
        self.conns: list[resp.RespConn | None] = [None] * clients
        self.timeout = timeout

    async def conn(self, i: int) -> resp.RespConn:
        conn = self.conns[i]
        if conn is None or conn.closed:
            conn = self.conns[i] = await resp.open_conn("127.0.0.1", self.port, self.timeout)
        return conn

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(min(0.1, self.timeout / 4))
            now = time.monotonic()
            for conn in self.conns:
                if conn is not None and conn.overdue(now, self.timeout):
                    conn.abort(TimeoutError())

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.abort(ConnectionResetError("closed"))


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "connection"
    return type(exc).__name__


def redis_op(pool: RespClients, i: int, wait: int, wait_ms: int) -> Op:
    key = f"k{i}"

    async def op(n: int) -> str | None:
        conn = await pool.conn(i)
        if not wait:
            reply = await conn.call("SET", key, n)
            return reply.kind if isinstance(reply, resp.RespError) else None
        # One logical write, so both commands leave in one segment (not a pipeline of writes:
        # the next SET waits for this WAIT).
        set_done, wait_done = conn.call_many(("SET", key, n), ("WAIT", wait, wait_ms))
        reply = await set_done
        got = await wait_done
        if isinstance(reply, resp.RespError):
            return reply.kind
        if isinstance(got, resp.RespError):
            return got.kind
        if not isinstance(got, int) or got < wait:
            return "wait_short"  # applied on the master, not on every replica in time
        return None
    return op


def pysyncobj_op(pool: RespClients, i: int) -> Op:
    key = f"k{i}"

    async def op(n: int) -> str | None:
        conn = await pool.conn(i)
        reply = await conn.call("SET", key, n)
        return reply.kind if isinstance(reply, resp.RespError) else None
    return op


async def ftds_ops(args: argparse.Namespace) -> tuple[list[Op], Callable[[], Awaitable[None]]]:
    from ftds.client import Client
    from ftds.config import load_config

    config = load_config(args.config)
    name = f"B{os.getpid()}"  # a fresh name: no watermarks from an earlier driver
    # The C sessions share ``--ftds-clients`` Client objects (each: one connection per replica);
    # one shared Client keeps all C writes in lockstep, one frame per turn.
    clients = [Client(config, config.read_key(), f"{name}-{k}" if k else name, trace=False)
               for k in range(max(1, min(args.ftds_clients, args.clients)))]
    for client in clients:
        await client.start()
    for client in clients:
        await client.wait_connected(10)

    def make(i: int) -> Op:
        session = clients[i % len(clients)].session(f"{name}.{i}")
        key = f"k{i}"

        async def op(n: int) -> str | None:
            reply = await session.call({"op": "put", "key": key, "value": n})
            res = reply.get("res")
            if isinstance(res, dict) and res.get("ok") is False:
                return "error"
            return None
        return op

    async def close() -> None:
        for client in clients:
            await client.close()

    return [make(i) for i in range(args.clients)], close


def snapshot(pids: dict[str, int]) -> dict[str, float | None]:
    return {label: read_cpu(pid) for label, pid in pids.items()}


async def run(args: argparse.Namespace) -> dict[str, object]:
    pids = dict(p.split("=", 1) for p in args.pid)
    server_pids = {label: int(pid) for label, pid in pids.items()}
    pool: RespClients | None = None
    if args.system == "ftds":
        ops, close = await ftds_ops(args)
    else:
        pool = RespClients(args.port, args.clients, args.op_timeout)
        for i in range(args.clients):  # connect before the clock starts
            await pool.conn(i)
        ops = [redis_op(pool, i, args.wait, args.wait_timeout_ms) if args.system == "redis"
               else pysyncobj_op(pool, i) for i in range(args.clients)]

        async def close() -> None:
            pool.close()

    start = time.monotonic() + args.warmup
    window = Window(start, start + args.duration)
    stopping = asyncio.Event()

    async def client(op: Op) -> None:
        n = 0
        while not stopping.is_set():
            n += 1
            sent = time.monotonic()
            try:
                kind = await op(n)
            except (OSError, TimeoutError, resp.ProtocolError) as exc:
                kind = failure_kind(exc)
            done = time.monotonic()
            if kind is None:
                window.record(sent, done)
            else:
                window.fail(kind, done)
                await asyncio.sleep(0.01)  # a refusing system is not hammered in a tight loop

    sweeper = asyncio.create_task(pool.sweep()) if pool else None
    tasks = [asyncio.create_task(client(op)) for op in ops]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu0, me0 = snapshot(server_pids), read_cpu(os.getpid())
    await asyncio.sleep(max(0.0, window.end - time.monotonic()))
    cpu1, me1 = snapshot(server_pids), read_cpu(os.getpid())
    stopping.set()
    _, pending = await asyncio.wait(tasks, timeout=args.op_timeout + 1)
    for task in pending:
        task.cancel()
    if sweeper:
        sweeper.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), 5)
    server_cpu = {label: (cpu1[label] or 0.0) - (cpu0[label] or 0.0)
                  for label in server_pids if cpu0[label] is not None}
    gone = sorted(label for label in server_pids if cpu1[label] is None)
    return {**window.summary(), "clients": args.clients, "system": args.system,
            "client_cpu_s": (me1 or 0.0) - (me0 or 0.0), "server_cpu_s": server_cpu,
            "servers_gone": gone, "unfinished": len(pending)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=["ftds", "redis", "pysyncobj"], required=True)
    parser.add_argument("--config", help="ftds: the cluster file")
    parser.add_argument("--port", type=int, help="Redis master / PySyncObj leader front end")
    parser.add_argument("--wait", type=int, default=2, help="Redis: WAIT numreplicas (0: none)")
    parser.add_argument("--wait-timeout-ms", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--ftds-clients", type=int, default=1,
                        help="ftds: Client objects the C sessions are spread over (default 1)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--op-timeout", type=float, default=5.0,
                        help="Redis/PySyncObj: a call unanswered this long is a timeout")
    parser.add_argument("--pid", action="append", default=[], metavar="LABEL=PID",
                        help="a server process whose CPU to account")
    args = parser.parse_args()
    from ftds.runloop import tune_gc
    tune_gc()  # the same client settings for every system
    import uvloop
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
