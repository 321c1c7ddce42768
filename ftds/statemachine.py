"""The replicated state machine: a key-value store with exactly-once client requests.

Applied deterministically, one ordered entry after another. Per client it keeps the highest
applied ``request_num`` (the high watermark) and the reply it produced, so a retried request is
answered from the cache and never executed twice. ``digest()`` hashes the canonical state so
divergence between replicas is visible.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from typing import Any

import orjson

from . import faults

SKIP_REPLY_CACHE = faults.on("skip_reply_cache")

OPS = ("get", "put", "incr", "delete", "cas")
# The fields each op may carry. The whole op travels with its entry (log, stream, reply cache),
# so a field it does not use is refused rather than carried unchecked.
FIELDS = {"get": frozenset(("op", "key")), "put": frozenset(("op", "key", "value")),
          "incr": frozenset(("op", "key", "delta")), "delete": frozenset(("op", "key")),
          "cas": frozenset(("op", "key", "expect", "value"))}
MAX_KEY_LEN = 256
# Bounds on what a client may store: every value must round-trip through the wire codec
# (orjson encodes 64-bit integers and at most 254 levels of nesting), and none may grow a
# checkpoint without limit. A request outside them gets an error reply and changes nothing.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32
MAX_VALUE_BYTES = 1 << 20
# The reply cache keeps a client's record while the client is active, and for REPLY_CACHE_TTL
# seconds of the orderer's clock after its last request (the time each entry carries, so every
# replica prunes the same records at the same seq). A retry later than that runs again.
REPLY_CACHE_TTL = 3600
PRUNE_EVERY = 4096  # entries between two sweeps of the reply cache

Result = dict[str, Any]
Entry = dict[str, Any]  # {"s": seq, "e": epoch, "c": client, "r": request_num, "op": {...}}


# Client ids are written into log lines read line by line and field by field (``EXEC S1 seq=5
# e=1 <C1, 5>``, ``Received <C1, S1, 5, request>``): no space, comma, bracket or control
# character, so none can forge a line or a field.
CLIENT_ID_CHARS = "letters, digits and . _ : @ + / = ~ -"
MAX_CLIENT_ID = 64
_CLIENT_ID = re.compile(rf"[A-Za-z0-9._:@+/=~-]{{1,{MAX_CLIENT_ID}}}", re.ASCII)


def client_id_problem(client: Any) -> str | None:
    """None if ``client`` may name a client, else why not."""
    if isinstance(client, str) and _CLIENT_ID.fullmatch(client):
        return None
    return f"client id must be 1-{MAX_CLIENT_ID} characters: {CLIENT_ID_CHARS}"


def validate_op(op: Any, values: bool = True) -> str | None:
    """None if ``op`` is a well-formed operation, else what is wrong with it. ``values=False``
    skips the walk through stored values (an entry the orderer already checked)."""
    if not isinstance(op, dict):
        return "op must be an object"
    name = op.get("op")
    if name not in OPS:
        return f"unknown op {name!r} (known: {', '.join(OPS)})"
    if not op.keys() <= FIELDS[name]:
        extra = sorted(str(f) for f in op.keys() - FIELDS[name])[0]
        return (f"unknown field {extra[:40]!r} for {name} (it takes: "
                f"{', '.join(sorted(FIELDS[name] - {'op'}))})")
    key = op.get("key")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
        return f"key must be a string of 1-{MAX_KEY_LEN} characters"
    if name in ("put", "cas") and "value" not in op:
        return f"{name} needs a value"
    if name == "cas" and "expect" not in op:
        return "cas needs expect"
    if name == "incr":
        delta = op.get("delta", 1)
        if isinstance(delta, bool) or not isinstance(delta, int):
            return "incr delta must be an integer"
        if not INT_MIN <= delta <= INT_MAX:
            return "incr delta must fit in a signed 64-bit integer"
    for field in ("value", "expect") if values else ():
        if field in op:
            problem = value_problem(op[field])
            if problem is not None:
                return f"{field}: {problem}"
    return None


def value_problem(value: Any) -> str | None:
    """None if ``value`` is storable (bounded depth, size and 64-bit integers), else why."""
    budget = [MAX_VALUE_BYTES]

    def walk(v: Any, depth: int) -> str | None:
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(v, str):
            budget[0] -= len(v) + 2
        elif isinstance(v, float):
            if not math.isfinite(v):  # only from the library: orjson decodes none
                return "numbers must be finite (JSON has no NaN or infinity)"
            budget[0] -= 8
        elif isinstance(v, bool) or v is None:
            budget[0] -= 8
        elif isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                return "integers must fit in a signed 64-bit integer"
            budget[0] -= 8
        elif isinstance(v, list):
            budget[0] -= 2
            for item in v:
                if (problem := walk(item, depth + 1)) is not None:
                    return problem
        elif isinstance(v, dict):
            budget[0] -= 2
            for k, item in v.items():
                if not isinstance(k, str):
                    return "object keys must be strings"
                budget[0] -= len(k) + 3
                if (problem := walk(item, depth + 1)) is not None:
                    return problem
        else:
            return f"values of type {type(v).__name__} cannot be stored"
        if budget[0] < 0:
            return f"larger than {MAX_VALUE_BYTES} bytes"
        return None

    return walk(value, 1)


def fingerprint(op: dict[str, Any]) -> int:
    """Identifies an operation, so a reused (client, request_num) with another op is caught."""
    return zlib.crc32(orjson.dumps(op, option=orjson.OPT_SORT_KEYS))


def execute(kv: dict[str, Any], op: dict[str, Any]) -> Result:
    """Run one validated operation against ``kv``; deterministic and never raises."""
    name = op["op"]
    key = op["key"]
    if name == "get":
        return {"ok": True, "value": kv.get(key)}
    if name == "put":
        kv[key] = op["value"]
        return {"ok": True}
    if name == "incr":
        current = kv.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, int):
            return {"ok": False, "error": f"value of {key!r} is not an integer"}
        current += op.get("delta", 1)
        if not INT_MIN <= current <= INT_MAX:
            return {"ok": False, "error": f"incr would overflow {key!r} (64-bit integers)"}
        kv[key] = current
        return {"ok": True, "value": current}
    if name == "delete":
        existed = key in kv
        kv.pop(key, None)
        return {"ok": True, "value": existed}
    # cas
    current = kv.get(key)
    if current == op["expect"] and type(current) is type(op["expect"]):
        kv[key] = op["value"]
        return {"ok": True, "value": op["value"], "swapped": True}
    return {"ok": True, "value": current, "swapped": False}


class StateMachine:
    def __init__(self, reply_cache_ttl: float = REPLY_CACHE_TTL) -> None:
        self.kv: dict[str, Any] = {}
        # The digest is kept as sums of per-item hashes, refreshed only for what changed since
        # the last digest: a periodic checkpoint of a large store costs what it changed, not
        # the whole store, so the event loop keeps answering heartbeats.
        self._sums = Sums()
        self.reply_cache_ttl = reply_cache_ttl
        # client id -> [high watermark request_num, cached result, seq of that request,
        #               its operation (its fingerprint once it came through a checkpoint),
        #               orderer's time of that request]
        self.clients: dict[str, list[Any]] = {}
        self.seq = 0  # last applied sequence number
        self.last_epoch = 0  # epoch of the last applied entry
        self.checkpoint_count = 0
        self.executed = 0  # entries executed by this replica since it started
        self.clock = 0  # the latest orderer time (``t``) an applied entry carried

    # -- applying --------------------------------------------------------------------------
    def watermark(self, client: str) -> int:
        record = self.clients.get(client)
        return record[0] if record else 0

    def cached(self, client: str, request_num: int) -> tuple[Result, int] | None:
        """The reply (and its seq) of ``request_num`` if it is the client's last applied one."""
        record = self.clients.get(client)
        if record and record[0] == request_num:
            return record[1], record[2]
        return None

    def same_op(self, client: str, op: Any) -> bool:
        """Whether ``op`` is the operation of the client's last applied request (a true retry),
        not a reused request_num carrying another operation."""
        record = self.clients.get(client)
        if record is None or len(record) < 4 or not isinstance(op, dict):
            return record is not None and len(record) < 4  # no fingerprint kept: trust it
        if validate_op(op) is not None:
            # What was applied was valid, so this is another op; and one past the bounds may
            # not even encode (its fingerprint would raise).
            return False
        kept = record[3]  # compared by fingerprint either way (1 == True in Python, not here)
        return fingerprint(op) == (fingerprint(kept) if isinstance(kept, dict) else kept)

    def apply(self, entry: Entry) -> tuple[Result, bool]:
        """Apply the next entry. Returns (result, executed); a duplicate is not executed."""
        seq = entry["s"]
        if seq != self.seq + 1:
            raise ValueError(f"entry {seq} applied out of order after {self.seq}")
        self.seq = seq
        self.last_epoch = entry["e"]
        client = entry["c"]
        request_num = entry["r"]
        record = self.clients.get(client)
        if record is not None and request_num <= record[0] and not SKIP_REPLY_CACHE:
            # Ordered twice (cannot happen from a correct orderer): never execute again.
            if request_num == record[0] and self.same_op(client, entry["op"]):
                return record[1], False
            return {"ok": False, "error": "stale request"}, False
        op = entry["op"]
        result = execute(self.kv, op)
        if op["op"] != "get":
            self._sums.dirty_keys.add(op["key"])
        self._sums.dirty_clients.add(client)
        at = entry.get("t", 0)
        if at > self.clock:
            self.clock = at
        # The op itself (no cost here); checkpoints carry its fingerprint instead.
        self.clients[client] = [request_num, result, seq, op, at]
        self.executed += 1
        if seq % PRUNE_EVERY == 0 and at:
            self.prune(at)
        return result, True

    def prune(self, now: int) -> int:
        """Drop the records of clients idle past the TTL (by the entries' time: deterministic
        on every replica). Returns how many went."""
        horizon = now - self.reply_cache_ttl
        idle = [c for c, rec in self.clients.items() if len(rec) > 4 and rec[4] < horizon]
        for client in idle:
            del self.clients[client]
        self._sums.dirty_clients.update(idle)
        return len(idle)

    # -- checkpoints -----------------------------------------------------------------------
    def digest(self) -> str:
        return self._sums.refresh(self.kv, self.clients)

    def hash_ahead(self, budget: int, keep: int) -> int:
        """Part of the next digest's work done now (see ``Sums.hash_ahead``)."""
        return self._sums.hash_ahead(self.kv, self.clients, budget, keep)

    def snapshot(self, epoch: int, state: bool = True, copy: bool = False) -> dict[str, Any]:
        """A checkpoint of everything a newcomer needs (the course's my_state and more).
        ``state=False``: its seq and digest only, without the store and the reply cache (a
        checkpoint sent as its digest need not pay for the client records' portable form).
        ``copy=True``: for a transfer over many turns of the loop, the store and the records
        as shallow copies the applier does not change (it replaces a record, never edits one);
        each record is made portable as its part is encoded (``portable_record``)."""
        self.checkpoint_count += 1
        cp: dict[str, Any] = {
            "checkpoint_count": self.checkpoint_count,
            "seq": self.seq,
            "epoch": epoch,
            "last_epoch": self.last_epoch,
        }
        if state and copy:
            cp["my_state"], cp["clients"] = dict(self.kv), dict(self.clients)
        elif state:
            cp["my_state"] = self.kv
            cp["clients"] = {c: portable_record(rec) for c, rec in self.clients.items()}
        cp["digest"] = self.digest()
        return cp

    def install(self, checkpoint: dict[str, Any], sums: Sums | None = None) -> None:
        """Replace the state by a checkpoint (already verified against its digest; ``sums``
        are the hashes that verification computed, so the next digest need not redo them)."""
        if sums is not None and sums.from_parts:
            self.kv, self.clients = checkpoint["my_state"], checkpoint["clients"]
        else:
            self.kv = dict(checkpoint["my_state"])
            self.clients = {c: list(rec) for c, rec in checkpoint["clients"].items()}
        self._sums = sums if sums is not None else Sums.of(self.kv, self.clients, lazy=True)
        self.seq = checkpoint["seq"]
        self.last_epoch = checkpoint["last_epoch"]
        self.checkpoint_count = checkpoint["checkpoint_count"]
        self.clock = max((rec[4] for rec in self.clients.values()
                          if len(rec) > 4 and isinstance(rec[4], int)), default=0)

    def describe(self, key: str) -> str:
        """The part of my_state a request touches, for the course's before/after lines."""
        return orjson.dumps({key: self.kv.get(key)}).decode()


def portable_record(record: list[Any]) -> list[Any]:
    """A client record as a checkpoint carries it: the operation as its fingerprint."""
    if len(record) > 3 and isinstance(record[3], dict):
        return [*record[:3], fingerprint(record[3]), *record[4:]]
    return record


_MOD = 1 << 256


def _item_hash(name: str, value: Any) -> int:
    return int.from_bytes(hashlib.blake2b(
        orjson.dumps([name, value], option=orjson.OPT_SORT_KEYS), digest_size=32).digest())


class Sums:
    """The state's digest as two sums (mod 2**256) of per-item hashes: one over the store's
    (key, value) pairs, one over each client's (id, watermark, reply). A sum does not depend on
    the order items were added in, so replicas at the same seq agree; ``refresh`` rehashes only
    the items marked dirty since the last digest."""

    def __init__(self) -> None:
        self.key_hash: dict[str, int] = {}
        self.client_hash: dict[str, int] = {}
        self.kv_sum = 0
        self.clients_sum = 0
        self.dirty_keys: set[str] = set()
        self.dirty_clients: set[str] = set()
        # Taken by a PartsCollector as a checkpoint's parts arrived: each client record's
        # shape was checked then, and the joined store and records belong to the receiver
        # alone, so neither is checked nor copied again (0.2 s at 100,000 records).
        self.from_parts = False

    @classmethod
    def of(cls, kv: dict[str, Any], clients: dict[str, list[Any]], lazy: bool = False) -> Sums:
        sums = cls()
        sums.dirty_keys.update(kv)
        sums.dirty_clients.update(clients)
        if not lazy:
            sums.refresh(kv, clients)
        return sums

    def absorb(self, kv: dict[str, Any], clients: dict[str, Any]) -> None:
        """Hash items as they arrive (a checkpoint's parts), a later one replacing an earlier
        one of the same name as the joined state does."""
        for key, value in kv.items():
            self.kv_sum -= self.key_hash.get(key, 0)
            self.key_hash[key] = h = _item_hash(key, value)
            self.kv_sum += h
        for client, rec in clients.items():
            self.clients_sum -= self.client_hash.get(client, 0)
            # A malformed record is refused by the checkpoint's shape check, not here.
            self.client_hash[client] = h = _item_hash(
                client, rec[:2] if isinstance(rec, list) else rec)
            self.clients_sum += h

    def _rehash_key(self, kv: dict[str, Any], key: str) -> None:
        self.kv_sum -= self.key_hash.pop(key, 0)
        if key in kv:
            self.key_hash[key] = h = _item_hash(key, kv[key])
            self.kv_sum += h

    def _rehash_client(self, clients: dict[str, list[Any]], client: str) -> None:
        self.clients_sum -= self.client_hash.pop(client, 0)
        rec = clients.get(client)
        if rec is not None:
            self.client_hash[client] = h = _item_hash(client, rec[:2])
            self.clients_sum += h

    def hash_ahead(self, kv: dict[str, Any], clients: dict[str, list[Any]], budget: int,
                   keep: int) -> int:
        """Hash at most ``budget`` changed items while more than ``keep`` of a kind wait, so
        that the next digest has little left to do. An item changed again after this is
        marked again and rehashed then. Returns how many were hashed."""
        done = 0
        while len(self.dirty_keys) > keep and done < budget:
            self._rehash_key(kv, self.dirty_keys.pop())
            done += 1
        while len(self.dirty_clients) > keep and done < budget:
            self._rehash_client(clients, self.dirty_clients.pop())
            done += 1
        return done

    def refresh(self, kv: dict[str, Any], clients: dict[str, list[Any]]) -> str:
        for key in self.dirty_keys:
            self._rehash_key(kv, key)
        for client in self.dirty_clients:
            self._rehash_client(clients, client)
        self.dirty_keys.clear()
        self.dirty_clients.clear()
        self.kv_sum %= _MOD
        self.clients_sum %= _MOD
        return hashlib.sha256(b"ftds-state-2 %d %d %064x %064x" % (
            len(kv), len(clients), self.kv_sum, self.clients_sum)).hexdigest()


def state_digest(kv: dict[str, Any], clients: dict[str, list[Any]]) -> str:
    """The digest of a whole state: the store and each client's watermark and reply."""
    return Sums.of(kv, clients, lazy=True).refresh(kv, clients)


def validate_checkpoint(cp: Any) -> str | None:
    """None if a received checkpoint has the right shape and digest, else what is wrong."""
    return verify_checkpoint(cp)[0]


def verify_checkpoint(cp: Any, sums: Sums | None = None) -> tuple[str | None, Sums | None]:
    """(None, the hashes it computed) if a received checkpoint has the right shape and digest,
    else (what is wrong, None). The hashes make the installed state's next digest cheap.
    ``sums``: its items' hashes, already taken as its parts arrived (and its client records
    checked then, see ``Sums.from_parts``)."""
    problem = _checkpoint_shape(cp, checked_records=sums is not None and sums.from_parts)
    if problem:
        return problem, None
    if sums is None:
        sums = Sums.of(cp["my_state"], cp["clients"], lazy=True)
    if sums.refresh(cp["my_state"], cp["clients"]) != cp["digest"]:
        return "checkpoint digest does not match its state", None
    return None, sums


def _checkpoint_shape(cp: Any, checked_records: bool = False) -> str | None:
    if not isinstance(cp, dict):
        return "checkpoint must be an object"
    for name, kind in (("checkpoint_count", int), ("seq", int), ("epoch", int),
                       ("last_epoch", int), ("my_state", dict), ("clients", dict),
                       ("digest", str)):
        if not isinstance(cp.get(name), kind):
            return f"checkpoint field {name!r} missing or wrong type"
    if not checked_records:
        for client, rec in cp["clients"].items():
            if (problem := client_record_problem(client, rec)) is not None:
                return problem
    return None


def client_record_problem(client: str, rec: Any) -> str | None:
    """None if a client record received in a checkpoint has the shape of one."""
    if not (isinstance(rec, list) and 3 <= len(rec) <= 5 and isinstance(rec[0], int)
            and isinstance(rec[2], int)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in rec[3:])):
        return f"checkpoint client record of {client!r} is malformed"
    return None
