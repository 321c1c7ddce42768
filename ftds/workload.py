"""A generated workload: N logical clients sending requests at a rate, with figures and history.

Each operation can be recorded as JSON lines (``invoke`` then ``ok``/``fail``, or ``info`` when
its outcome is unknown at the end), the form a history checker reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import IO, Any

import orjson

from .client import Client, RequestFailed, Session
from .config import ClusterConfig


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class OpGenerator:
    def __init__(self, mix: str, keys: int, seed: int, prefix: str = "") -> None:
        self.mix = mix
        self.keys = [f"{prefix}k{i}" for i in range(keys)]
        self.rng = random.Random(seed)
        self.counter = 0

    def next(self, session: str) -> dict[str, Any]:
        key = self.rng.choice(self.keys)
        if self.mix == "incr":
            return {"op": "incr", "key": key, "delta": 1}
        self.counter += 1
        choice = self.rng.random()
        if choice < 0.3:
            return {"op": "get", "key": key}
        if choice < 0.6:
            return {"op": "put", "key": key, "value": f"{session}:{self.counter}"}
        if choice < 0.8:
            return {"op": "cas", "key": key, "expect": None, "value": f"{session}:{self.counter}"}
        return {"op": "incr", "key": f"{key}.n", "delta": 1}


class Recorder:
    def __init__(self, path: str | None) -> None:
        self._fh: IO[bytes] | None = open(path, "wb") if path else None  # noqa: SIM115

    def write(self, **event: Any) -> None:
        if self._fh is not None:
            event["time"] = time.monotonic_ns()  # one clock for every process on this host
            event["wall"] = time.time()
            self._fh.write(orjson.dumps(event) + b"\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


async def _session_loop(session: Session, gen: OpGenerator, interval: float, end: float,
                        stats: dict[str, Any], rec: Recorder, stop: asyncio.Event) -> None:
    next_at = time.monotonic()
    while time.monotonic() < end and not stop.is_set():
        op = gen.next(session.id)
        rec.write(process=session.id, type="invoke", op=op)
        started = time.monotonic()
        stats["sent"] += 1
        outstanding = session.start(op)
        try:
            reply = await outstanding.future
        except (RequestFailed, asyncio.CancelledError):
            rec.write(process=session.id, type="info", op=op, request_num=session.request_num)
            return
        done = time.monotonic()
        result = reply["res"]
        rec.write(process=session.id, type="ok" if result.get("ok") else "fail", op=op,
                  result=result, request_num=session.request_num, seq=reply.get("s"),
                  replica=reply.get("from"), epoch=reply.get("e"))
        stats["latencies"].append((done - started) * 1000)
        if result.get("ok"):
            stats["acked"] += 1
        else:
            stats["failed"] += 1
        if stats["last_ack"]:
            stats["max_gap"] = max(stats["max_gap"], done - stats["last_ack"])
        stats["last_ack"] = done
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()


async def _until_stopped(tasks: list[asyncio.Task[None]], stop: asyncio.Event, end: float,
                         drain: float = 30.0) -> None:
    """Run until the sessions finish; once told to stop, give them ``drain`` seconds to finish
    their outstanding request, then give up on it (recorded as an unknown outcome)."""
    everything = asyncio.gather(*tasks)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({everything, stopper}, timeout=max(0.0, end - time.monotonic())
                                 + drain, return_when=asyncio.FIRST_COMPLETED)
    if everything not in done:
        try:
            await asyncio.wait_for(asyncio.shield(everything), drain)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()


async def run_workload(config: ClusterConfig, key: bytes, *, name: str = "C1", clients: int = 3,
                       rate: float = 20.0, duration: float = 10.0, keys: int = 4,
                       trace: bool = False, history: str | None = None, mix: str = "incr",
                       seed: int = 1, client: Client | None = None,
                       stop: asyncio.Event | None = None, prefix: str = "",
                       duplicate: int = 0) -> dict[str, Any]:
    """Run sessions until ``duration`` passed or ``stop`` is set; each finishes its request."""
    stop = stop or asyncio.Event()
    own = client is None
    if client is None:
        client = Client(config, key, name, trace=trace)
        client.duplicate_every = duplicate
        await client.start()
        await client.wait_connected(10, count=1)
        await asyncio.sleep(0.05)
    rec = Recorder(history)
    stats: dict[str, Any] = {"sent": 0, "acked": 0, "failed": 0, "latencies": [],
                             "max_gap": 0.0, "last_ack": 0.0}
    gen = OpGenerator(mix, keys, seed + sum(map(ord, name)), prefix)
    interval = clients / rate if rate > 0 else 0.0
    started = time.monotonic()
    end = started + duration
    names = [name if i == 0 else f"{name}.{i + 1}" for i in range(clients)]
    tasks = [asyncio.create_task(_session_loop(client.session(n), gen, interval, end, stats, rec,
                                               stop))
             for n in names]
    try:
        await _until_stopped(tasks, stop, end)
    finally:
        for task in tasks:
            task.cancel()
        elapsed = time.monotonic() - started
        if own:
            with contextlib.suppress(Exception):
                await client.close()
        rec.close()
    lat = stats["latencies"]
    return {
        "sent": stats["sent"], "acked": stats["acked"], "failed": stats["failed"],
        "duration": elapsed, "rate": stats["acked"] / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                       "max": max(lat, default=0.0)},
        "retries": client.stats["retries"], "duplicates": client.stats["duplicates"],
        "sent_twice": client.stats["duplicated"],
        "max_gap_ms": stats["max_gap"] * 1000,
    }
