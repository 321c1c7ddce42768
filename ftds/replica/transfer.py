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
from collections.abc import Callable, Iterable
from typing import Any

from ..wire import Conn, Message, WireError, encode_body, envelope

PACE_BUFFER = 4 * 1024 * 1024  # bytes a paced transfer lets wait in the link before pausing

STATE_FIELDS = ("my_state", "clients")


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
    """Joins the ``cp_part`` messages that precede a checkpoint's metadata."""

    def __init__(self) -> None:
        self.kv: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}
        self.count = 0

    def reset(self) -> None:
        self.kv, self.clients, self.count = {}, {}, 0

    def add(self, msg: Message) -> None:
        kv, clients = msg.get("kv"), msg.get("clients")
        if not isinstance(kv, dict) or not isinstance(clients, dict):
            raise WireError("malformed", "cp_part: kv and clients must be objects")
        self.kv.update(kv)
        self.clients.update(clients)
        self.count += 1

    def complete(self, cp: Any) -> Any:
        """The checkpoint with its state joined in (a checkpoint sent whole passes through)."""
        if not isinstance(cp, dict) or "parts" not in cp:
            return cp
        parts = cp["parts"]
        if isinstance(parts, bool) or not isinstance(parts, int) or parts != self.count:
            count = self.count
            self.reset()
            raise WireError("malformed", f"checkpoint announces {parts!r} parts, got {count}")
        whole = {k: v for k, v in cp.items() if k != "parts"}
        whole["my_state"], whole["clients"] = self.kv, self.clients
        self.reset()
        return whole
