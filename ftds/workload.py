"""A generated workload: N logical clients sending requests at a rate, with figures and history.

Each operation can be recorded as JSON lines (``invoke`` then ``ok``/``fail``, or ``info`` when
its outcome is unknown at the end), the form a history checker reads.

``hostile=True`` adds a hostile session among the normal ones: between normal requests it sends
requests every replica must refuse with an error reply and no other effect (``HOSTILE_KINDS``):
an ``incr`` that overflows a signed 64-bit counter, values nested deeper than allowed or larger
than 1 MiB, keys over 256 characters, an unknown operation, an operation with a field it does
not take (a nested value hidden where no value is checked), and its own client id reused (from
a second connection, as a restarted process would) with a ``request_num`` it already used for
another operation. Each is recorded with ``hostile: KIND`` on its invocation, so a checker can
require an error for every one and count none as an acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import IO, Any

import orjson

from .client import Client, Outstanding, RequestFailed, Session
from .config import ClusterConfig

HOSTILE_KINDS = ("incr_overflow", "deep_value", "huge_value", "long_key", "unknown_op",
                 "unused_field", "reused_request_num")
INT64_MAX = 2**63 - 1


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


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth - 1):
        value = [value]
    return value


class HostileSession:
    """A session that mixes normal requests with requests that must all be refused."""

    def __init__(self, client: Client, twin: Client, sid: str, prefix: str, keys: list[str],
                 seed: int, rec: Recorder) -> None:
        self.client = client
        self.twin = twin  # the same client id from another connection
        self.session = client.session(sid)
        self.sid = sid
        self.counter = f"{prefix}hostile.n"  # its own counter: 1 after its first request
        self.own = f"{prefix}hostile.v"
        self.keys = keys
        self.rng = random.Random(seed)
        self.rec = rec
        self.last_ok: int | None = None  # request_num of its last acknowledged request
        self.counts: dict[str, dict[str, int]] = {
            k: {"sent": 0, "refused": 0, "accepted": 0, "unknown": 0} for k in HOSTILE_KINDS}

    async def _await(self, out: Outstanding, op: dict[str, Any],
                     hostile: str | None) -> dict[str, Any] | None:
        try:
            reply = await out.future
        except (RequestFailed, asyncio.CancelledError):
            self.rec.write(process=self.sid, type="info", op=op, request_num=out.request_num)
            if hostile:
                self.counts[hostile]["unknown"] += 1
            raise
        result = reply["res"]
        ok = bool(result.get("ok"))
        self.rec.write(process=self.sid, type="ok" if ok else "fail", op=op, result=result,
                       request_num=out.request_num, seq=reply.get("s"),
                       replica=reply.get("from"), epoch=reply.get("e"))
        if hostile:
            self.counts[hostile]["accepted" if ok else "refused"] += 1
        elif ok:
            self.last_ok = out.request_num
        return reply

    async def normal(self, op: dict[str, Any]) -> dict[str, Any] | None:
        self.rec.write(process=self.sid, type="invoke", op=op)
        return await self._await(self.session.start(op), op, None)

    def _hostile_op(self, kind: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(what is sent, what the history records: the same, a huge value summarized)."""
        key = self.rng.choice(self.keys)
        if kind == "incr_overflow":
            op: dict[str, Any] = {"op": "incr", "key": self.counter, "delta": INT64_MAX}
        elif kind == "deep_value":
            op = {"op": "put", "key": key, "value": _nested(40 + n % 8)}
        elif kind == "huge_value":
            size = (1 << 20) + 1024 + n % 4096
            op = {"op": "put", "key": key, "value": "x" * size}
            return op, {"op": "put", "key": key, "value": f"<{size} characters of x>"}
        elif kind == "long_key":
            op = {"op": "put", "key": "k" * (257 + n % 64), "value": n}
        elif kind == "unused_field":
            op = {"op": "get", "key": key, "extra": _nested(40 + n % 8)}
        elif kind == "unknown_op":
            op = {"op": self.rng.choice(["frobnicate", "drop_all", "INCR", ""]), "key": key}
        else:
            op = {"op": "put", "key": key, "value": f"{self.sid}:reused:{n}"}
        return op, op

    async def hostile(self, kind: str, n: int) -> None:
        op, recorded = self._hostile_op(kind, n)
        self.counts[kind]["sent"] += 1
        if kind == "reused_request_num":
            num = self.last_ok or 1
            # Another process with our id, resending a number we already used, another op.
            self.rec.write(process=self.sid, type="invoke", op=recorded, hostile=kind,
                           reuses=num)
            out = self.twin.submit(self.sid, num, op, first=False)
        else:
            self.rec.write(process=self.sid, type="invoke", op=recorded, hostile=kind)
            out = self.session.start(op)
        await self._await(out, recorded, kind)

    async def run(self, interval: float, end: float, stop: asyncio.Event) -> None:
        try:
            # Its counter at 1 before anything else, so every later incr of 2**63-1 overflows.
            reply = await self.normal({"op": "incr", "key": self.counter, "delta": 1})
            while reply is None or not reply["res"].get("ok"):
                reply = await self.normal({"op": "incr", "key": self.counter, "delta": 1})
            n = 0
            while time.monotonic() < end and not stop.is_set():
                key = self.rng.choice(self.keys)
                await self.normal({"op": "get", "key": key} if n % 2 else
                                  {"op": "put", "key": self.own, "value": f"{self.sid}:{n}"})
                await self.hostile(HOSTILE_KINDS[n % len(HOSTILE_KINDS)], n)
                n += 1
                if interval:
                    await asyncio.sleep(interval)
        except (RequestFailed, asyncio.CancelledError):
            return


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
                       duplicate: int = 0, hostile: bool = False) -> dict[str, Any]:
    """Run sessions until ``duration`` passed or ``stop`` is set; each finishes its request.

    ``hostile``: one more session, ``<name>.hostile``, mixing normal requests with requests
    that must be refused (see the module's description)."""
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
    twin: Client | None = None
    bad: HostileSession | None = None
    if hostile:
        twin = Client(config, key, f"{name}.twin", trace=False)
        await twin.start()
        await twin.wait_connected(10, count=1)
        bad = HostileSession(client, twin, f"{name}.hostile", prefix, gen.keys,
                             seed + sum(map(ord, name)) + 1, rec)
        tasks.append(asyncio.create_task(bad.run(interval, end, stop)))
    try:
        await _until_stopped(tasks, stop, end)
    finally:
        for task in tasks:
            task.cancel()
        elapsed = time.monotonic() - started
        if twin is not None:
            with contextlib.suppress(Exception):
                await twin.close()
        if own:
            with contextlib.suppress(Exception):
                await client.close()
        rec.close()
    lat = stats["latencies"]
    extra = {"hostile": bad.counts} if bad is not None else {}
    return extra | {
        "sent": stats["sent"], "acked": stats["acked"], "failed": stats["failed"],
        "duration": elapsed, "rate": stats["acked"] / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                       "max": max(lat, default=0.0)},
        "retries": client.stats["retries"], "duplicates": client.stats["duplicates"],
        "sent_twice": client.stats["duplicated"],
        "max_gap_ms": stats["max_gap"] * 1000,
    }
