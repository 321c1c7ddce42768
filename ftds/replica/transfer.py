"""State and log transfer in frames of bounded size.

A checkpoint, a catch-up or a fetched history can be far larger than one frame (``max_frame``).
They leave as a run of bounded messages instead:

- a checkpoint's state goes as ``cp_part`` messages, each a slice of ``my_state`` and of the
  client records, followed by the message that carries the checkpoint's metadata (seq, epoch,
  digest, count) with ``parts: n``; the receiver joins the parts, checks the digest over the
  whole, and only then installs it;
- a list of log entries is cut into consecutive slices that each fit.

Every body is encoded once; a piece that does not fit is halved until it does (one entry or one
key per piece at worst, and those are bounded by the value limits of the state machine).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from ..statemachine import Sums, client_record_problem, portable_record
from ..wire import Conn, Message, WireError, encode_body, envelope

PACE_BUFFER = 4 * 1024 * 1024  # bytes a paced transfer lets wait in the link before pausing

STATE_FIELDS = ("my_state", "clients")
# A transferred state's parts stay under this, whatever the frame: the sender encodes, and the
# receiver decodes and hashes, one part per turn of its loop (8 MiB of client records took
# 0.25 s of the receiver's loop, longer than failure detection tolerates).
PART_BYTES = 1024 * 1024


def limit_for(max_frame: int) -> int:
    """The body size a transfer aims under: half a frame leaves room for the envelope."""
    return max(max_frame // 2, 1024)


def pack(items: list[Any], encode: Callable[[list[Any]], bytes], limit: int) -> list[bytes]:
    """Bodies for consecutive slices of ``items``, each under ``limit`` where it can be."""
    body = encode(items)
    if len(body) <= limit or len(items) <= 1:
        return [body]
    half = len(items) // 2
    return pack(items[:half], encode, limit) + pack(items[half:], encode, limit)


def checkpoint_bodies(cp: dict[str, Any], final_kind: str, final_fields: Message, sender: str,
                      epoch: int, limit: int) -> list[bytes]:
    """The ``cp_part`` bodies of a checkpoint, then ``final_kind`` with its metadata."""
    pieces: list[tuple[str, Any, Any]] = [("k", k, v) for k, v in cp["my_state"].items()]
    pieces += [("c", c, rec) for c, rec in cp["clients"].items()]

    def encode(chunk: list[tuple[str, Any, Any]]) -> bytes:
        return encode_body(envelope("cp_part", sender, epoch, {
            "kv": {k: v for t, k, v in chunk if t == "k"},
            "clients": {c: rec for t, c, rec in chunk if t == "c"}}))

    parts = pack(pieces, encode, limit) if pieces else []
    meta = {k: v for k, v in cp.items() if k not in STATE_FIELDS}
    meta["parts"] = len(parts)
    final = encode_body(envelope(final_kind, sender, epoch,
                                 {**final_fields, "checkpoint": meta}))
    return [*parts, final]


class CheckpointParts:
    """``checkpoint_bodies`` made one body at a time, as the sender pulls them: a large state
    is encoded across turns of the loop (``send_paced`` yields between bodies) rather than in
    one stall the failure detectors would take for a hang. The state handed in must not change
    while it is sent (a copy). ``scanned`` turns true once every item was taken into a part, so
    after the first body a caller knows whether the rest is only the metadata."""

    def __init__(self, cp: dict[str, Any], final_kind: str, final_fields: Message, sender: str,
                 epoch: int, limit: int) -> None:
        self.cp, self.final_kind, self.final_fields = cp, final_kind, final_fields
        self.sender, self.epoch, self.limit = sender, epoch, min(limit, PART_BYTES)
        self.parts = 0
        self.scanned = False
        self._started: Iterator[bytes] | None = None

    def all_if_small(self) -> list[bytes] | None:
        """Every body, made now, if the state fits one part; else None, having made only the
        first (iterating then goes on from there)."""
        stream = self._bodies()
        first = next(stream)
        if self.scanned:
            return [first, *stream]
        self._started = itertools.chain([first], stream)
        return None

    def __iter__(self) -> Iterator[bytes]:
        if self._started is not None:
            started, self._started = self._started, None
            return started
        return self._bodies()

    def _encode(self, chunk: list[tuple[str, Any, Any]]) -> bytes:
        return encode_body(envelope("cp_part", self.sender, self.epoch, {
            "kv": {k: v for t, k, v in chunk if t == "k"},
            "clients": {c: rec for t, c, rec in chunk if t == "c"}}))

    def _bodies(self) -> Iterator[bytes]:
        pieces = itertools.chain((("k", k, v) for k, v in self.cp["my_state"].items()),
                                 (("c", c, portable_record(rec))
                                  for c, rec in self.cp["clients"].items()))
        # Cut by an estimate of each item's encoded size, then encode each part once (halved
        # by ``pack`` should the estimate fall short).
        aim = self.limit * 3 // 4
        chunk: list[tuple[str, Any, Any]] = []
        size = 0
        for piece in pieces:
            cost = len(piece[1]) + len(orjson.dumps(piece[2])) + 16
            if chunk and size + cost > aim:
                for body in pack(chunk, self._encode, self.limit):
                    self.parts += 1
                    yield body
                chunk, size = [], 0
            chunk.append(piece)
            size += cost
        self.scanned = True
        if chunk:
            for body in pack(chunk, self._encode, self.limit):
                self.parts += 1
                yield body
        meta = {k: v for k, v in self.cp.items() if k not in STATE_FIELDS}
        meta["parts"] = self.parts
        yield encode_body(envelope(self.final_kind, self.sender, self.epoch,
                                   {**self.final_fields, "checkpoint": meta}))


async def send_paced(conn: Conn, bodies: Iterable[bytes]) -> bool:
    """Send ``bodies`` in order, each once the link drained below ``PACE_BUFFER`` (the peer
    reads as fast as it can: a burst would overflow the write buffer). False if it closed."""
    for body in bodies:
        while conn.pending_bytes() > PACE_BUFFER:
            if conn.is_closing():
                return False
            await asyncio.sleep(0.002)
        if conn.is_closing():
            return False
        conn.send_raw(body)
        await asyncio.sleep(0)  # the frame is written on the next turn of the loop
    return not conn.is_closing()


class PartsCollector:
    """Joins the ``cp_part`` messages that precede a checkpoint's metadata, hashing each part
    as it arrives: the digest check of a large state is spread over the loop's turns instead of
    stalling it once the last part is in."""

    def __init__(self) -> None:
        self.kv: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}
        self.count = 0
        self.sums = Sums()
        self.last_sums: Sums | None = None  # the hashes of what ``complete`` last returned

    def reset(self) -> None:
        self.kv, self.clients, self.count, self.sums = {}, {}, 0, Sums()

    def add(self, msg: Message) -> None:
        kv, clients = msg.get("kv"), msg.get("clients")
        if not isinstance(kv, dict) or not isinstance(clients, dict):
            raise WireError("malformed", "cp_part: kv and clients must be objects")
        for client, rec in clients.items():  # checked here, a part per turn, not at the end
            if (problem := client_record_problem(client, rec)) is not None:
                self.reset()
                raise WireError("malformed", problem)
        self.kv.update(kv)
        self.clients.update(clients)
        self.sums.absorb(kv, clients)
        self.count += 1

    def complete(self, cp: Any) -> Any:
        """The checkpoint with its state joined in (a checkpoint sent whole passes through)."""
        self.last_sums = None
        if not isinstance(cp, dict) or "parts" not in cp:
            return cp
        parts = cp["parts"]
        if isinstance(parts, bool) or not isinstance(parts, int) or parts != self.count:
            count = self.count
            self.reset()
            raise WireError("malformed", f"checkpoint announces {parts!r} parts, got {count}")
        whole = {k: v for k, v in cp.items() if k != "parts"}
        whole["my_state"], whole["clients"] = self.kv, self.clients
        self.sums.from_parts = True
        self.last_sums = self.sums
        self.reset()
        return whole
