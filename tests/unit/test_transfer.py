"""Transfers in bounded frames: pieces fit, join back to the same state, and a short run of
parts is refused rather than installed."""

import orjson
import pytest

from ftds.replica.transfer import PartsCollector, checkpoint_bodies, pack
from ftds.statemachine import StateMachine, validate_checkpoint, verify_checkpoint
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


def test_parts_are_hashed_as_they_arrive_and_the_check_at_the_end_rehashes_nothing(monkeypatch):
    from ftds import statemachine

    sm = StateMachine()
    for n in range(1, 301):
        sm.apply({"s": n, "e": 1, "c": f"C{n % 7}", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 200}})
    bodies = checkpoint_bodies(sm.snapshot(1), "catchup", {"commit": 300}, "S1", 1, 8192)
    collector = PartsCollector()
    for body in bodies[:-1]:
        collector.add(decode_body(body))
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    sums = collector.last_sums
    assert sums is not None
    hashed = []
    real = statemachine._item_hash
    monkeypatch.setattr(statemachine, "_item_hash",
                        lambda *a: hashed.append(a) or real(*a))
    problem, kept = statemachine.verify_checkpoint(whole, sums)
    assert problem is None and kept is sums and not hashed
    member = StateMachine()
    member.install(whole, kept)
    assert member.digest() == sm.digest() and not hashed


def test_a_part_altered_on_the_way_fails_the_digest_hashed_on_arrival():
    sm = StateMachine()
    for n in range(1, 101):
        sm.apply({"s": n, "e": 1, "c": "C1", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 200}})
    bodies = checkpoint_bodies(sm.snapshot(1), "checkpoint", {}, "S1", 1, 4096)
    collector = PartsCollector()
    for i, body in enumerate(bodies[:-1]):
        part = decode_body(body)
        if i == 1:
            key = next(iter(part["kv"]))
            part["kv"][key] = "altered"
        collector.add(part)
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    assert verify_checkpoint(whole, collector.last_sums) == (
        "checkpoint digest does not match its state", None)


def test_checkpoint_parts_are_made_one_at_a_time_and_join_back_to_the_state():
    from ftds.replica.transfer import CheckpointParts

    sm = StateMachine()
    for n in range(1, 2001):
        sm.apply({"s": n, "e": 1, "c": f"C{n % 5}", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": {"n": n, "pad": "v" * 300}}})
    cp = sm.snapshot(1)
    parts = CheckpointParts(cp, "catchup", {"commit": 2000}, "S1", 1, 16384)
    stream = iter(parts)
    next(stream)
    assert parts.parts == 1 and not parts.scanned, "only the first part is encoded so far"
    bodies = [*stream]
    assert parts.scanned and parts.parts == len(bodies) > 20
    assert all(len(b) <= 16384 for b in bodies)
    collector = PartsCollector()
    for body in bodies[:-1]:
        collector.add(decode_body(body))
    first = decode_body(next(iter(CheckpointParts(cp, "catchup", {"commit": 2000}, "S1", 1,
                                                  16384))))
    collector.add(first)  # the first part, pulled above, joins in any order
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    assert verify_checkpoint(whole, collector.last_sums)[0] is None
    assert whole["my_state"] == cp["my_state"] and whole["clients"] == cp["clients"]


def test_a_state_that_fits_one_part_is_sent_exactly_as_before():
    from ftds.replica.transfer import CheckpointParts

    sm = StateMachine()
    for n in range(1, 51):
        sm.apply({"s": n, "e": 1, "c": "C1", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": n}})
    cp = sm.snapshot(1)
    parts = CheckpointParts(cp, "catchup", {"commit": 50}, "S1", 1, 1 << 20)
    stream = iter(parts)
    next(stream)
    assert parts.scanned
    assert list(CheckpointParts(cp, "catchup", {"commit": 50}, "S1", 1, 1 << 20)) == \
        checkpoint_bodies(cp, "catchup", {"commit": 50}, "S1", 1, 1 << 20)


def test_all_if_small_makes_one_part_of_a_large_state_and_sending_goes_on_from_there():
    from ftds.replica.transfer import CheckpointParts

    sm = StateMachine()
    for n in range(1, 1001):
        sm.apply({"s": n, "e": 1, "c": "C1", "r": n,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 500}})
    cp = sm.snapshot(1)
    parts = CheckpointParts(cp, "catchup", {"commit": 1000}, "S1", 1, 16384)
    assert parts.all_if_small() is None and parts.parts == 1
    bodies = list(parts)
    assert parts.parts == len(bodies) - 1 > 20
    collector = PartsCollector()
    for body in bodies[:-1]:
        collector.add(decode_body(body))
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    assert verify_checkpoint(whole, collector.last_sums)[0] is None
    small = CheckpointParts(cp, "catchup", {"commit": 1000}, "S1", 1, 1 << 22).all_if_small()
    assert small is not None and len(small) == 2


def test_parts_stay_under_part_bytes_however_large_the_frame():
    """With the default 16 MiB frame a catch-up went in 8 MiB parts: the member decoded and
    hashed 100,000 client records in one turn (0.25 s) and its LFD took it for hung."""
    from ftds.replica.transfer import PART_BYTES, CheckpointParts

    sm = StateMachine()
    for n in range(1, 3001):
        sm.apply({"s": n, "e": 1, "c": f"C{n}", "r": 1,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 1000}})
    bodies = list(CheckpointParts(sm.snapshot(1, copy=True), "catchup", {"commit": 3000},
                                  "S1", 1, 8 * 1024 * 1024))
    assert len(bodies) - 1 >= 3 and all(len(b) <= PART_BYTES for b in bodies[:-1])


def test_a_copied_snapshot_is_sent_as_it_was_taken_with_portable_records():
    """A transfer's snapshot is a shallow copy, its records made portable part by part: what
    the applier does meanwhile is not sent, and the member installs the same checkpoint."""
    from ftds.replica.transfer import CheckpointParts

    sm = StateMachine()
    for n in range(1, 2001):
        sm.apply({"s": n, "e": 1, "c": f"C{n % 300}", "r": n // 300 + 1,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 300}})
    whole_then = sm.snapshot(1)
    whole_then = {**whole_then, "my_state": dict(whole_then["my_state"])}
    parts = CheckpointParts(sm.snapshot(1, copy=True), "catchup", {"commit": 2000}, "S1", 1,
                            16384)
    stream = iter(parts)
    bodies = [next(stream)]
    for n in range(2001, 2101):  # the applier goes on while the parts are made
        sm.apply({"s": n, "e": 1, "c": f"C{n % 300}", "r": 10,
                  "op": {"op": "put", "key": f"k{n % 50}", "value": "changed"}})
    bodies += list(stream)
    collector = PartsCollector()
    for body in bodies[:-1]:
        collector.add(decode_body(body))
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    assert verify_checkpoint(whole, collector.last_sums)[0] is None
    assert whole["my_state"] == whole_then["my_state"]
    assert whole["clients"] == whole_then["clients"]  # portable: each op as its fingerprint
    assert all(isinstance(rec[3], int) for rec in whole["clients"].values())


def test_a_malformed_client_record_is_refused_with_its_part():
    """Records are checked a part at a time as they arrive (the whole state's check at the
    end took 0.1 s of one turn at 100,000 records), and the joined state is not checked or
    copied again when it is installed."""
    from ftds.replica.transfer import CheckpointParts

    sm = StateMachine()
    for n in range(1, 401):
        sm.apply({"s": n, "e": 1, "c": f"C{n}", "r": 1,
                  "op": {"op": "put", "key": f"k{n}", "value": "v" * 100}})
    bodies = list(CheckpointParts(sm.snapshot(1, copy=True), "catchup", {"commit": 400}, "S1",
                                  1, 8192))
    bad = decode_body(bodies[1])
    bad["clients"] = {**bad["clients"], "C-forged": [1, {"ok": True}, "not a seq"]}
    collector = PartsCollector()
    collector.add(decode_body(bodies[0]))
    with pytest.raises(WireError, match="C-forged"):
        collector.add(bad)
    assert collector.count == 0  # what came before it is dropped too

    for body in bodies[:-1]:
        collector.add(decode_body(body))
    whole = collector.complete(decode_body(bodies[-1])["checkpoint"])
    problem, sums = verify_checkpoint(whole, collector.last_sums)
    assert problem is None and sums.from_parts
    member = StateMachine()
    member.install(whole, sums)
    assert member.clients is whole["clients"]  # taken as joined, not copied
    assert member.digest() == sm.digest() and member.clock == sm.clock
