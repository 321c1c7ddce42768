"""The orderer's commit decisions (ftds/replica/orderer.py), driven event by event: no sockets,
no tasks, time given with each step."""

from __future__ import annotations

import pytest

from ftds.replica.orderer import (
    Acked,
    Applied,
    Commitment,
    Committed,
    DropLaggards,
    Holds,
    Lease,
    LeftEpoch,
    ReadySet,
    Serving,
    Tick,
    TookEpoch,
)

LAG = 0.5  # seconds a stuck commit waits before members are dropped


def serving(members=("S2", "S3"), seq=0, **kw) -> Commitment:
    core = Commitment(**kw)
    assert core.step(TookEpoch(members), 0.0) == ()
    assert core.step(Serving(seq), 0.0) == ()
    return core


def test_an_entry_is_committed_only_once_every_member_acknowledged_it():
    core = serving()
    assert core.step(Applied(3), 1.0) == ()
    assert core.step(Acked("S2", 3), 1.0) == ()
    assert core.step(Acked("S3", 2), 1.0) == (Committed(2),)
    assert core.step(Acked("S3", 3), 1.0) == (Committed(3),)
    assert core.commit == 3


def test_a_new_epoch_counts_nothing_of_its_history_committed_until_the_members_hold_it():
    """The history a new orderer collected is answered only once acknowledged in its epoch."""
    core = serving(("S2",), seq=5)
    assert core.commit == 0
    assert core.step(Holds("S2", 3), 1.0) == ()  # its catch-up was sent: no commit tried
    assert core.step(Applied(5), 1.0) == (Committed(3),)
    assert core.step(Acked("S2", 5), 1.0) == (Committed(5),)


def test_nothing_is_committed_during_the_view_change():
    core = Commitment()
    core.step(TookEpoch(("S2",)), 0.0)
    assert core.step(Acked("S2", 4), 1.0) == ()
    assert core.step(Applied(4), 1.0) == ()
    assert core.commit == 0


def test_alone_it_commits_only_under_a_live_lease():
    core = serving(members=())
    assert core.step(Applied(2), 1.0) == (), "no lease: another orderer may have been promoted"
    core.step(Lease(until=3.0), 1.0)
    assert core.step(Applied(2), 1.5) == (Committed(2),)
    assert core.step(Tick(4, LAG), 2.9) == (Committed(4),)
    assert core.step(Tick(6, LAG), 3.0) == (), "the lease ran out at 3.0"


def test_async_replication_answers_under_the_lease_without_waiting_for_members():
    core = serving(waits_for_members=False)
    core.step(Lease(until=10.0), 0.0)
    assert core.step(Applied(4), 1.0) == (Committed(4),)
    core2 = serving(waits_for_members=False)
    assert core2.step(Applied(4), 1.0) == ()


def test_acks_of_a_subscriber_outside_the_ready_set_never_commit():
    core = serving(("S2",))
    core.step(Applied(3), 1.0)
    assert core.step(Acked("S3", 3), 1.0) == ()
    assert core.commit == 0


def test_a_member_added_in_the_epoch_holds_back_commits_from_what_it_held():
    core = serving(("S2",))
    core.step(Applied(4), 1.0)
    assert core.step(Acked("S2", 4), 1.0) == (Committed(4),)
    core.step(Applied(6), 1.5)
    assert core.step(ReadySet(("S2", "S3"), 6, holds={"S3": 2}), 2.0) == ()
    assert core.step(Acked("S2", 6), 2.0) == (), "S3 holds only up to 2"
    assert core.step(Acked("S3", 6), 2.0) == (Committed(6),)


def test_removing_a_member_lets_the_commit_move_without_it():
    core = serving()
    core.step(Applied(5), 1.0)
    core.step(Acked("S2", 5), 1.0)
    assert core.step(ReadySet(("S2",), 5), 2.0) == (Committed(5),)
    assert "S3" not in core.acked


def test_it_vouches_for_a_view_once_every_member_holds_what_was_committed_when_it_was_taken():
    core = serving(("S2",))
    core.step(Applied(3), 1.0)
    core.step(Acked("S2", 3), 1.0)
    assert core.vouches()
    core.step(ReadySet(("S2", "S3"), 3, holds={"S3": 1}), 2.0)
    assert not core.vouches(), "S3 may miss entries 2 and 3"
    core.step(Acked("S3", 3), 2.0)
    assert core.vouches()


def test_members_holding_the_commit_back_are_reported_once_per_limit():
    core = serving()
    core.step(Applied(4), 0.0)
    core.step(Acked("S2", 4), 0.0)
    assert core.step(Tick(4, LAG), 0.1) == ()  # stalled since it began serving, at 0.0
    assert core.step(Tick(4, LAG), 0.4) == ()
    assert core.step(Tick(4, LAG), 0.6) == (DropLaggards(("S3",), 0.6),)
    assert core.step(Tick(4, LAG), 0.9) == (), "asked already; asks again only after the limit"
    assert core.step(Tick(4, LAG), 1.2) == (DropLaggards(("S3",), 1.2),)


def test_a_commit_that_moves_is_not_a_stall():
    core = serving(("S2",))
    for n in range(1, 20):
        core.step(Applied(n + 1), n * 0.1)
        core.step(Acked("S2", n), n * 0.1)
        assert core.step(Tick(n + 1, LAG), n * 0.1) == ()


def test_leaving_the_epoch_forgets_acks_and_the_lease():
    core = serving(("S2",))
    core.step(Lease(until=9.0), 0.0)
    core.step(Applied(2), 1.0)
    core.step(Acked("S2", 2), 1.0)
    core.step(LeftEpoch(), 2.0)
    assert core.acked == {} and not core.lease_ok(2.0) and not core.serving
    assert core.step(Applied(3), 2.0) == ()


def test_a_new_orderer_gives_its_members_the_whole_limit_before_asking_to_drop_them():
    """The stall clock starts when it begins serving, not at process start: a member sent a
    checkpoint acknowledges nothing for a while, and is not dropped on the first tick."""
    core = Commitment()
    core.step(TookEpoch(("S2",)), 100.0)
    core.step(Holds("S2", 0), 100.0)  # sent a checkpoint: holds nothing acknowledged yet
    core.step(Serving(9), 100.0)
    assert core.step(Tick(9, LAG), 100.02) == ()
    assert core.step(Tick(9, LAG), 100.3) == ()
    assert core.step(Tick(9, LAG), 100.5) == (DropLaggards(("S2",), 0.5),)


def test_a_stall_of_an_earlier_epoch_does_not_carry_over_into_the_next():
    core = serving(("S2",))
    core.step(Applied(9), 10.0)
    core.step(Acked("S2", 7), 10.0)
    core.step(Tick(9, LAG), 10.1)  # stalled at commit 7 since 10.1
    core.step(LeftEpoch(), 20.0)
    core.step(TookEpoch(("S2",)), 30.0)
    core.step(Holds("S2", 7), 30.0)
    core.step(Serving(9), 30.0)
    assert core.step(Applied(9), 30.0) == (Committed(7),)
    assert core.step(Tick(9, LAG), 30.25) == ()  # stalled at commit 7 since 30.25
    assert core.step(Tick(9, LAG), 30.5) == ()
    assert core.step(Tick(9, LAG), 30.75) == (DropLaggards(("S2",), 0.5),)


def test_an_event_it_does_not_know_is_an_error_not_a_silent_no_op():
    with pytest.raises(TypeError):
        Commitment().step(object(), 0.0)  # type: ignore[arg-type]
