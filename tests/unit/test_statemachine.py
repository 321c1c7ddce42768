import random

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
