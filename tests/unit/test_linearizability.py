import math
import random

from ftds.statemachine import execute
from ftds_tools.chaos.history import Op, parse
from ftds_tools.chaos.linearizability import check_key


def op(i, f, invoke, complete, result=None, outcome="ok", key="x", **args):
    return Op(i, f"P{i}", f, key, {"op": f, "key": key, **args}, invoke,
              complete if complete is not None else math.inf,
              outcome if complete is not None else "info", result)


def test_sequential_put_then_get():
    h = [op(0, "put", 0, 1, {"ok": True}, value=1), op(1, "get", 2, 3, {"ok": True, "value": 1})]
    assert check_key("x", h).ok


def test_stale_read_after_a_completed_write_is_caught():
    h = [op(0, "put", 0, 1, {"ok": True}, value=1),
         op(1, "get", 2, 3, {"ok": True, "value": None})]
    verdict = check_key("x", h)
    assert not verdict.ok
    assert "get(x)" in verdict.explanation
    assert any(o.f == "put" for o in verdict.involved)


def test_concurrent_read_may_see_old_or_new_but_not_invented_values():
    put = op(0, "put", 0, 10, {"ok": True}, value=1)
    assert check_key("x", [put, op(1, "get", 1, 2, {"ok": True, "value": None})]).ok
    assert check_key("x", [put, op(1, "get", 1, 2, {"ok": True, "value": 1})]).ok
    assert not check_key("x", [put, op(1, "get", 1, 2, {"ok": True, "value": 7})]).ok


def test_two_successful_cas_from_the_same_value_is_not_linearizable():
    a = op(0, "cas", 0, 5, {"ok": True, "value": "a", "swapped": True}, expect=None, value="a")
    b = op(1, "cas", 1, 6, {"ok": True, "value": "b", "swapped": True}, expect=None, value="b")
    assert not check_key("x", [a, b]).ok
    b_lost = op(1, "cas", 1, 6, {"ok": True, "value": "a", "swapped": False}, expect=None,
                value="b")
    assert check_key("x", [a, b_lost]).ok


def test_unknown_outcome_may_or_may_not_have_happened():
    maybe = op(0, "put", 0, None, value=2)  # info: never answered
    assert check_key("x", [maybe, op(1, "get", 5, 6, {"ok": True, "value": 2})]).ok
    assert check_key("x", [maybe, op(1, "get", 5, 6, {"ok": True, "value": None})]).ok
    assert not check_key("x", [maybe, op(1, "get", 5, 6, {"ok": True, "value": 3})]).ok


def test_an_increment_applied_twice_is_caught():
    a = op(0, "incr", 0, 1, {"ok": True, "value": 1}, delta=1)
    b = op(1, "incr", 2, 3, {"ok": True, "value": 3}, delta=1)  # as if a ran twice
    assert not check_key("x", [a, b]).ok


def test_failed_operations_had_no_effect():
    bad = op(0, "put", 0, 1, {"ok": False, "error": "x"}, outcome="fail", value=9)
    assert check_key("x", [bad, op(1, "get", 2, 3, {"ok": True, "value": None})]).ok


def random_linearizable_history(seed, n=600, procs=12):
    """Run ops on a real store in some order, then give them overlapping real-time windows."""
    rng = random.Random(seed)
    kv = {}
    ops = []
    t = 0.0
    for i in range(n):
        t += rng.random()
        choice = rng.random()
        if choice < 0.4:
            args = {"op": "get", "key": "x"}
        elif choice < 0.7:
            args = {"op": "put", "key": "x", "value": f"v{i}"}
        elif choice < 0.9:
            args = {"op": "cas", "key": "x", "expect": kv.get("x"), "value": f"c{i}"}
            if rng.random() < 0.5:
                args["expect"] = "nope"
        else:
            args = {"op": "incr", "key": "n", "delta": 1}
            args["key"] = "x"
            if not isinstance(kv.get("x"), int) and kv.get("x") is not None:
                args = {"op": "get", "key": "x"}
        result = execute(kv, args)
        # the linearization point is t: the window around it overlaps its neighbours
        invoke = t - rng.random() * 2
        complete = t + rng.random() * 2
        ops.append(Op(i, f"P{i % procs}", args["op"], "x", args, invoke, complete, "ok",
                      result))
    return ops


def test_random_linearizable_histories_pass():
    for seed in range(5):
        verdict = check_key("x", random_linearizable_history(seed))
        assert verdict.ok, verdict.explanation


def test_random_history_with_one_corrupted_read_fails():
    ops = random_linearizable_history(3)
    reads = [o for o in ops if o.f == "get" and o.result["value"] is not None]
    target = reads[len(reads) // 2]
    target.result = {"ok": True, "value": "never written"}
    assert not check_key("x", ops).ok


def test_parse_pairs_invocations_with_completions_per_process():
    events = [
        {"process": "C1", "type": "invoke", "op": {"op": "put", "key": "a", "value": 1},
         "time": 1_000_000_000},
        {"process": "C2", "type": "invoke", "op": {"op": "get", "key": "a"},
         "time": 1_100_000_000},
        {"process": "C1", "type": "ok", "op": {"op": "put", "key": "a", "value": 1},
         "result": {"ok": True}, "time": 1_200_000_000, "replica": "S1", "seq": 4},
        {"process": "C2", "type": "info", "op": {"op": "get", "key": "a"},
         "time": 1_900_000_000},
    ]
    ops = parse(events)
    assert [(o.process, o.f, o.outcome) for o in ops] == [("C1", "put", "ok"),
                                                        ("C2", "get", "info")]
    assert ops[0].complete == 1.2 and ops[0].seq == 4
    assert math.isinf(ops[1].complete)
