"""A replica's checkpoints (ftds/replica/checkpoints.py): what the log keeps behind them, whole or
digest-only sending, and what a received one does to the state."""

from __future__ import annotations

import pytest

from ftds.replica.checkpoints import WHOLE_CHECKPOINT_BYTES, Checkpoints
from ftds.replica.member import AtCheckpoint
from ftds.replica.replog import ReplicationLog
from ftds.statemachine import StateMachine
from ftds.wire import WireError, encode_body, envelope


def replica_state(n: int, *, value: str = "v") -> Checkpoints:
    sm, log = StateMachine(), ReplicationLog()
    for seq in range(1, n + 1):
        entry = {"s": seq, "e": 1, "c": "C1", "r": seq,
                 "op": {"op": "put", "key": f"k{seq}", "value": value}}
        sm.apply(entry)
        log.append(entry)
    return Checkpoints("S1", sm, log, lambda: False)


def body(kind: str, fields: dict) -> bytes:
    return encode_body(envelope(kind, "S1", 1, fields))


def test_the_log_keeps_everything_since_the_checkpoint_before_the_last():
    cps = replica_state(30)
    for seq in (10, 20, 25):
        cps.taken(seq)
        assert cps.log.entries_after(cps.prev_seq) is not None, \
            f"a member one checkpoint behind ({cps.prev_seq}) cannot catch up from the log"
    assert (cps.prev_seq, cps.seq) == (20, 25)
    assert cps.log.entries_after(9) is None, "the log is never truncated"
    assert cps.due()
    cps.taken(30)
    assert not cps.due()


def test_a_state_that_fits_a_frame_goes_whole_a_larger_one_as_its_digest():
    small = replica_state(5)
    bodies, why = small.periodic(small.sm.snapshot(1), "S1", 1, 64 * 1024, body)
    assert why == "periodic" and b'"t":"cp_part"' in bodies[0] and b'"k5":"v"' in bodies[0]
    assert not any(b'"digest_only"' in b for b in bodies)

    big = replica_state(400, value="x" * 200)  # ~90 KB of state against a 16 KB limit
    bodies, why = big.periodic(big.sm.snapshot(1), "S1", 1, 16 * 1024, body)
    assert why == "periodic, digest only" and len(bodies) == 1
    assert b'"digest_only":true' in bodies[0] and b'"t":"cp_part"' not in bodies[0]
    assert big.state_parts > 1


def test_a_large_state_is_measured_again_once_its_keys_halved():
    cps = replica_state(400, value="x" * 200)
    cps.periodic(cps.sm.snapshot(1), "S1", 1, 16 * 1024, body)
    for seq in range(401, 801):  # every key deleted: far below half the items
        cps.sm.apply({"s": seq, "e": 1, "c": "C1", "r": seq,
                      "op": {"op": "delete", "key": f"k{seq - 400}"}})
    assert len(cps.sm.kv) == 0
    bodies, why = cps.periodic(cps.sm.snapshot(1), "S1", 1, 16 * 1024, body)
    assert why == "periodic" and b'"t":"cp_part"' in bodies[0] and cps.state_parts == 1


def test_a_digest_that_differs_is_a_divergence_and_leaves_the_state_alone():
    member = replica_state(3)
    before = member.sm.digest()
    good = {"seq": 3, "digest": before, "checkpoint_count": 7, "epoch": 1}
    assert member.compare(good, "S1") is AtCheckpoint.MATCH
    assert member.sm.checkpoint_count == 7 and member.seq == 3
    assert member.compare({**good, "digest": "0" * 64}, "S1") is AtCheckpoint.DIVERGED
    assert member.divergences == 1 and member.sm.digest() == before
    with pytest.raises(WireError):
        member.compare({"seq": "3"}, "S1")


def test_a_checkpoint_that_fails_its_digest_replaces_nothing():
    primary, member = replica_state(5), replica_state(2)
    cp = primary.sm.snapshot(1)
    forged = {**cp, "my_state": {**cp["my_state"], "k1": "forged"}}
    before = member.sm.digest()
    with pytest.raises(WireError):
        member.install(forged)
    with pytest.raises(WireError):
        member.from_stream(forged, "S1")
    assert member.sm.digest() == before and member.sm.seq == 2
    member.install(cp)
    assert member.sm.digest() == primary.sm.digest() and member.log.last_seq == 5
    assert member.prev_seq == member.seq == 5


def test_a_checkpoint_sent_as_its_digest_is_taken_without_its_state():
    """A periodic checkpoint of a large state carries only its digest, but it was made whole:
    every client record was put in portable form (0.13 s of the loop at 100,000 clients)."""
    big = replica_state(400, value="x" * 200)
    big.periodic(big.sm.snapshot(1), "S1", 1, 16 * 1024, body)  # measured: many frames
    assert not big.may_go_whole()
    cp = big.sm.snapshot(1, state=False)
    assert "my_state" not in cp and "clients" not in cp
    assert cp["digest"] == big.sm.digest() and cp["seq"] == 400
    bodies, why = big.periodic(cp, "S1", 1, 16 * 1024, body)
    assert why == "periodic, digest only" and b'"digest_only":true' in bodies[0]


def test_a_state_larger_than_a_small_checkpoint_goes_as_its_digest_even_if_it_fits_a_frame():
    """A periodic checkpoint went whole whenever the state fit a frame (8 MiB): 30,000 client
    records made the orderer encode, and every member decode and rehash, 2 MB each second,
    150-290 ms of each loop; the LFDs took that for hangs."""
    cps = replica_state(WHOLE_CHECKPOINT_BYTES // 150, value="x" * 200)  # > the bound
    bodies, why = cps.periodic(cps.sm.snapshot(1), "S1", 1, 8 * 1024 * 1024, body)
    assert why == "periodic, digest only" and len(bodies) == 1
    small = replica_state(20)
    bodies, why = small.periodic(small.sm.snapshot(1), "S1", 1, 8 * 1024 * 1024, body)
    assert why == "periodic" and b'"t":"cp_part"' in bodies[0]  # the course's checkpoint


def test_a_state_of_more_items_than_a_small_checkpoint_holds_is_not_snapshotted_whole():
    """Knowing a state is not small cost a whole snapshot (every client record made portable)
    and one part's encoding, 100-140 ms at 30,000 sessions; the item count tells at once."""
    cps = replica_state(WHOLE_CHECKPOINT_BYTES // 16 + 1, value="")
    assert cps.state_parts == 0  # never measured
    assert not cps.may_go_whole()
    assert replica_state(100).may_go_whole()
