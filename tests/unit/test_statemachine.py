import random

import pytest

from ftds.replica.replog import ReplicationLog
from ftds.statemachine import StateMachine, execute, validate_checkpoint, validate_op


def entries(n, seed=1, clients=4, keys=3):
    rng = random.Random(seed)
    counters = dict.fromkeys(range(clients), 0)
    out = []
    for seq in range(1, n + 1):
        c = rng.randrange(clients)
        counters[c] += 1
        key = f"k{rng.randrange(keys)}"
        op = rng.choice([
            {"op": "incr", "key": key, "delta": rng.randint(1, 5)},
            {"op": "put", "key": key, "value": rng.randint(0, 9)},
            {"op": "get", "key": key},
            {"op": "cas", "key": key, "expect": rng.randint(0, 9), "value": rng.randint(0, 9)},
            {"op": "delete", "key": key},
        ])
        out.append({"s": seq, "e": 1, "c": f"C{c}", "r": counters[c], "op": op})
    return out


def test_same_entries_same_state_and_digest():
    a, b = StateMachine(), StateMachine()
    for e in entries(500):
        a.apply(e)
        b.apply(dict(e))
    assert a.digest() == b.digest()
    assert a.kv == b.kv


def test_different_order_gives_a_different_digest():
    put1 = {"e": 1, "c": "C1", "r": 1, "op": {"op": "put", "key": "x", "value": 1}}
    put2 = {"e": 1, "c": "C2", "r": 1, "op": {"op": "put", "key": "x", "value": 2}}
    a, b = StateMachine(), StateMachine()
    a.apply({**put1, "s": 1})
    a.apply({**put2, "s": 2})
    b.apply({**put2, "s": 1})
    b.apply({**put1, "s": 2})
    assert a.digest() != b.digest()


def test_retried_request_executes_once_and_returns_the_first_reply():
    sm = StateMachine()
    first, executed = sm.apply({"s": 1, "e": 1, "c": "C1", "r": 1,
                                "op": {"op": "incr", "key": "x", "delta": 1}})
    assert executed and first == {"ok": True, "value": 1}
    again, executed = sm.apply({"s": 2, "e": 1, "c": "C1", "r": 1,
                                "op": {"op": "incr", "key": "x", "delta": 1}})
    assert not executed
    assert again == first
    assert sm.kv["x"] == 1
    assert sm.cached("C1", 1) == (first, 1)
    assert sm.watermark("C1") == 1


def test_out_of_order_apply_is_refused():
    sm = StateMachine()
    try:
        sm.apply({"s": 2, "e": 1, "c": "C1", "r": 1, "op": {"op": "get", "key": "x"}})
    except ValueError as exc:
        assert "out of order" in str(exc)
    else:
        raise AssertionError("applied seq 2 first")


def test_operations():
    kv = {}
    assert execute(kv, {"op": "put", "key": "a", "value": "v"}) == {"ok": True}
    assert execute(kv, {"op": "get", "key": "a"}) == {"ok": True, "value": "v"}
    assert execute(kv, {"op": "incr", "key": "a"})["ok"] is False
    assert execute(kv, {"op": "incr", "key": "n", "delta": 3}) == {"ok": True, "value": 3}
    assert execute(kv, {"op": "cas", "key": "n", "expect": 2, "value": 9})["swapped"] is False
    assert execute(kv, {"op": "cas", "key": "n", "expect": 3, "value": 9})["swapped"] is True
    assert kv["n"] == 9
    # True == 1 in Python; cas must not confuse them
    kv["b"] = 1
    assert execute(kv, {"op": "cas", "key": "b", "expect": True, "value": 0})["swapped"] is False
    assert execute(kv, {"op": "delete", "key": "n"}) == {"ok": True, "value": True}
    assert execute(kv, {"op": "delete", "key": "n"}) == {"ok": True, "value": False}


def test_validate_op():
    assert validate_op({"op": "get", "key": "x"}) is None
    assert "unknown op" in validate_op({"op": "drop", "key": "x"})
    assert "key must be" in validate_op({"op": "get", "key": ""})
    assert "needs a value" in validate_op({"op": "put", "key": "x"})
    assert "cas needs expect" in validate_op({"op": "cas", "key": "x", "value": 1})
    assert "delta" in validate_op({"op": "incr", "key": "x", "delta": "1"})
    assert validate_op("get x") == "op must be an object"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"a": float("-inf")}]])
def test_a_number_that_is_not_finite_is_not_storable(value):
    """JSON has no NaN or infinity; the wire would carry them as null."""
    assert "finite" in validate_op({"op": "put", "key": "x", "value": value})
    assert "finite" in validate_op({"op": "cas", "key": "x", "expect": value, "value": 1})
    assert validate_op({"op": "put", "key": "x", "value": [1.5, {"a": -2.0e300}]}) is None


def test_an_object_key_that_is_not_a_string_is_not_storable():
    assert "keys must be strings" in validate_op({"op": "put", "key": "x", "value": {1: 2}})


def test_an_op_carries_only_the_fields_of_its_kind():
    """A field the op does not use travels with it (log, stream, reply cache, checkpoints):
    unchecked, it could hold what the value bounds refuse, or what the codec cannot encode
    again and so stop every orderer in turn."""
    deep: list = []
    for _ in range(300):
        deep = [deep]
    assert "unknown field 'extra'" in validate_op({"op": "get", "key": "x", "extra": deep})
    assert "unknown field 'value'" in validate_op({"op": "get", "key": "x", "value": 1})
    assert "unknown field 'delta'" in validate_op({"op": "put", "key": "x", "value": 1,
                                                    "delta": "x" * (2 << 20)})
    assert "unknown field 'value'" in validate_op({"op": "incr", "key": "x", "value": 1})
    assert "unknown field" in validate_op({"op": "delete", "key": "x", "expect": None})
    for op in ({"op": "get", "key": "x"}, {"op": "put", "key": "x", "value": 1},
               {"op": "incr", "key": "x"}, {"op": "incr", "key": "x", "delta": 2},
               {"op": "delete", "key": "x"}, {"op": "cas", "key": "x", "expect": 1, "value": 2}):
        assert validate_op(op) is None, op
        assert validate_op(op, values=False) is None, op
    # Entries from the orderer are checked without their values, but never with extra fields.
    assert validate_op({"op": "get", "key": "x", "extra": 1}, values=False) is not None


def test_checkpoint_install_then_replay_equals_the_original():
    es = entries(300, seed=7)
    primary = StateMachine()
    for e in es[:200]:
        primary.apply(e)
    checkpoint = primary.snapshot(epoch=1)
    for e in es[200:]:
        primary.apply(e)
    newborn = StateMachine()
    newborn.install(checkpoint)
    assert newborn.seq == 200
    for e in es[150:]:  # recorded while catching up: those below the checkpoint are skipped
        if e["s"] > newborn.seq:
            newborn.apply(e)
    assert newborn.digest() == primary.digest()
    assert newborn.clients == primary.clients


def test_checkpoint_validation_catches_tampering():
    sm = StateMachine()
    for e in entries(20):
        sm.apply(e)
    cp = sm.snapshot(1)
    import orjson
    cp = orjson.loads(orjson.dumps(cp))
    assert validate_checkpoint(cp) is None
    cp["my_state"]["k0"] = "forged"
    assert validate_checkpoint(cp) == "checkpoint digest does not match its state"
    assert "missing" in validate_checkpoint({"seq": 1})


def test_log_entries_after_and_truncate():
    log = ReplicationLog()
    for e in entries(10):
        log.append(e)
    assert [e["s"] for e in log.entries_after(7)] == [8, 9, 10]
    assert log.entries_after(10) == []
    log.truncate(5)
    assert log.base == 5 and log.entry(6)["s"] == 6 and log.entry(5) is None
    assert log.entries_after(4) is None  # truncated: needs a checkpoint
    assert [e["s"] for e in log.entries_after(5)] == [6, 7, 8, 9, 10]
    try:
        log.append({"s": 12})
    except ValueError:
        pass
    else:
        raise AssertionError("gap accepted")


def test_reply_cache_forgets_clients_idle_past_the_ttl_the_same_way_everywhere():
    from ftds.statemachine import PRUNE_EVERY

    a, b = StateMachine(reply_cache_ttl=10), StateMachine(reply_cache_ttl=10)
    a.apply({"s": 1, "e": 1, "c": "idle", "r": 1, "t": 1000,
             "op": {"op": "put", "key": "x", "value": 1}})
    for seq in range(2, PRUNE_EVERY + 1):
        entry = {"s": seq, "e": 1, "c": "busy", "r": seq, "t": 1000 + seq // 100,
                 "op": {"op": "incr", "key": "n"}}
        a.apply(entry)
        if seq == PRUNE_EVERY // 2:
            b.install(a.snapshot(1))  # a member that joined half way prunes the same
        elif seq > PRUNE_EVERY // 2:
            b.apply(dict(entry))
    assert "idle" not in a.clients and "busy" in a.clients
    assert a.digest() == b.digest() and a.clients == b.clients
    assert a.watermark("idle") == 0  # a retry this late runs again: the documented window


def test_reply_cache_keeps_clients_within_the_ttl():
    from ftds.statemachine import PRUNE_EVERY

    sm = StateMachine(reply_cache_ttl=3600)
    for seq in range(1, PRUNE_EVERY + 1):
        sm.apply({"s": seq, "e": 1, "c": f"C{seq % 3}", "r": seq // 3 + 1, "t": 5000 + seq,
                  "op": {"op": "incr", "key": "n"}})
    assert set(sm.clients) == {"C0", "C1", "C2"}


def test_the_kept_digest_is_the_digest_of_the_whole_state_at_every_step():
    """Digests taken now and then, with installs and reply-cache sweeps between them, always
    equal the digest computed from scratch over the same store and client records."""
    from ftds import statemachine

    sm = StateMachine(reply_cache_ttl=5)
    for i, e in enumerate(entries(3000, seed=7, clients=6, keys=40)):
        e["t"] = i // 50  # the orderer's clock: idle clients age out of the reply cache
        sm.apply(e)
        if i % 97 == 0:
            assert sm.digest() == statemachine.state_digest(sm.kv, sm.clients)
        if i % 701 == 0:
            newborn = StateMachine()
            newborn.install(sm.snapshot(1))  # lazily hashed on its first digest
            assert newborn.digest() == sm.digest()
            sm = newborn
    sm.digest()
    swept = sm.prune(10**6)  # nothing applied since that digest: only the sweep changed it
    assert swept > 0
    assert sm.digest() == statemachine.state_digest(sm.kv, sm.clients)


def test_the_same_state_reached_in_another_order_has_the_same_digest():
    a, b = StateMachine(), StateMachine()
    puts = [{"op": "put", "key": f"k{i}", "value": {"n": i, "tags": ["x", i]}} for i in range(50)]
    for n, op in enumerate(puts, 1):
        a.apply({"s": n, "e": 1, "c": f"C{n}", "r": 1, "op": op})
    for n, op in enumerate(reversed(puts), 1):
        b.apply({"s": n, "e": 1, "c": f"C{51 - n}", "r": 1, "op": op})
    assert a.kv == b.kv and list(a.kv) != list(b.kv)
    assert a.digest() == b.digest()
    b.apply({"s": 51, "e": 1, "c": "C1", "r": 2, "op": {"op": "put", "key": "k3", "value": 0}})
    assert a.digest() != b.digest()


def test_a_digest_rehashes_only_what_changed_since_the_last(monkeypatch):
    """A periodic checkpoint of a large store costs what changed, not the whole store."""
    from ftds import statemachine

    sm = StateMachine()
    for n in range(1, 5001):
        sm.apply({"s": n, "e": 1, "c": "C1", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 100}})
    sm.digest()
    hashed = []
    real = statemachine._item_hash
    monkeypatch.setattr(statemachine, "_item_hash",
                        lambda name, value: hashed.append(name) or real(name, value))
    for n, op in enumerate([{"op": "put", "key": "k7", "value": 1},
                            {"op": "get", "key": "k8"},
                            {"op": "delete", "key": "k9"}], 5001):
        sm.apply({"s": n, "e": 1, "c": "C2", "r": n, "op": op})
    digest = sm.digest()
    assert sorted(hashed) == ["C2", "k7"], "one client record and one live key rehashed"
    assert digest == statemachine.state_digest(sm.kv, sm.clients)


def test_an_installed_checkpoint_keeps_the_hashes_its_verification_computed(monkeypatch):
    from ftds import statemachine

    primary = StateMachine()
    for e in entries(300, keys=50):
        primary.apply(e)
    cp = primary.snapshot(1)
    problem, sums = statemachine.verify_checkpoint(cp)
    assert problem is None and sums is not None
    tampered = {**cp, "my_state": {**cp["my_state"], "k0": "tampered"}}
    assert statemachine.verify_checkpoint(tampered) == (
        "checkpoint digest does not match its state", None)
    hashed = []
    monkeypatch.setattr(statemachine, "_item_hash", lambda *a: hashed.append(a) or 0)
    member = StateMachine()
    member.install(cp, sums)
    assert member.digest() == primary.digest() and not hashed


def test_a_retry_that_cannot_be_the_applied_op_is_told_apart_without_encoding_it():
    """same_op runs before any validation (a retry is recognised first): an op the codec cannot
    encode must come back as "another op", never raise."""
    sm = StateMachine()
    put = {"op": "put", "key": "x", "value": 1}
    sm.apply({"s": 1, "e": 1, "c": "C1", "r": 1, "op": put, "t": 0})
    deep: list = []
    for _ in range(300):
        deep = [deep]
    assert sm.same_op("C1", dict(put))
    assert not sm.same_op("C1", {"op": "put", "key": "x", "value": deep})
    assert not sm.same_op("C1", {"op": "put", "key": "x", "value": 2**64 - 1})
    assert not sm.same_op("C1", {**put, "extra": 1})


def test_the_state_keeps_the_latest_orderer_time_through_a_checkpoint():
    sm = StateMachine()
    for n, t in ((1, 1000), (2, 1005), (3, 1003)):
        sm.apply({"s": n, "e": 1, "c": f"C{n}", "r": 1,
                  "op": {"op": "put", "key": "x", "value": n}, "t": t})
    assert sm.clock == 1005
    other = StateMachine()
    other.install(sm.snapshot(1))
    assert other.clock == 1005


def test_changed_items_hashed_ahead_leave_a_digest_that_costs_only_the_rest(monkeypatch):
    """100,000 sessions each changing their record between two checkpoints made the digest
    rehash 100,000 records in one turn of the loop (0.24 s). Hashing ahead, a slice at a time,
    leaves the digest at most ``keep`` items to hash, and the digest is the same."""
    from ftds import statemachine

    sm = StateMachine()
    for n in range(1, 3001):
        sm.apply({"s": n, "e": 1, "c": f"C{n}", "r": 1,
                  "op": {"op": "put", "key": f"k{n % 700}", "value": n}})
    assert sm.hash_ahead(budget=1000, keep=500) == 1000  # a slice, within its budget
    while sm.hash_ahead(budget=1000, keep=500):
        pass
    for n in range(3001, 3101):  # changed again after they were hashed ahead
        sm.apply({"s": n, "e": 1, "c": f"C{n - 3000}", "r": 2,
                  "op": {"op": "incr", "key": "counter"}})
    hashed = []
    real = statemachine._item_hash
    monkeypatch.setattr(statemachine, "_item_hash",
                        lambda name, value: hashed.append(name) or real(name, value))
    digest = sm.digest()
    assert len(hashed) <= 2 * 500 + 101
    assert digest == statemachine.state_digest(sm.kv, sm.clients)
    assert sm.hash_ahead(budget=1000, keep=0) == 0  # nothing left to hash after a digest
