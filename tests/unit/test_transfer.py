"""Transfers in bounded frames: pieces fit, join back to the same state, and a short run of
parts is refused rather than installed."""

import orjson
import pytest

from ftds.replica.transfer import PartsCollector, checkpoint_bodies, pack
from ftds.statemachine import StateMachine, validate_checkpoint
from ftds.wire import WireError, decode_body, encode_body, envelope


def test_pack_cuts_a_list_into_slices_that_fit_and_keeps_the_order():
    items = [{"s": n, "v": "x" * 100} for n in range(1, 201)]
    bodies = pack(items, lambda part: encode_body(envelope("entries", "S1", 1,
                                                            {"entries": part})), 4000)
    assert len(bodies) > 5 and all(len(b) <= 4000 for b in bodies)
    joined = [e for b in bodies for e in orjson.loads(b)["entries"]]
    assert joined == items


def test_a_checkpoint_sent_in_parts_joins_back_and_passes_its_digest():
    sm = StateMachine()
    for n in range(1, 301):
        sm.apply({"s": n, "e": 1, "c": f"C{n % 7}", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 200}})
    cp = sm.snapshot(1)
    bodies = checkpoint_bodies(cp, "catchup", {"commit": 300}, "S1", 1, 8192)
    assert len(bodies) > 5 and all(len(b) <= 8192 for b in bodies[:-1])
    collector = PartsCollector()
    for body in bodies[:-1]:
        collector.add(decode_body(body))
    final = decode_body(bodies[-1])
    whole = collector.complete(final["checkpoint"])
    assert validate_checkpoint(whole) is None
    assert whole["my_state"] == cp["my_state"] and whole["seq"] == 300


def test_a_missing_part_is_refused_not_installed():
    sm = StateMachine()
    for n in range(1, 101):
        sm.apply({"s": n, "e": 1, "c": "C1", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 200}})
    bodies = checkpoint_bodies(sm.snapshot(1), "checkpoint", {}, "S1", 1, 4096)
    collector = PartsCollector()
    for body in bodies[1:-1]:  # the first part lost
        collector.add(decode_body(body))
    with pytest.raises(WireError, match="parts"):
        collector.complete(decode_body(bodies[-1])["checkpoint"])
    assert collector.count == 0
