"""What a replica does with a view and how a new orderer collects its epoch's history
(ftds/replica/viewchange.py): pure decisions, checked case by case."""

from __future__ import annotations

import pytest

from ftds.replica.viewchange import (
    FetchFrom,
    Serve,
    Take,
    WaitForMembers,
    admits,
    catchup_from_log,
    judge_view,
    may_come_due,
    recovery_step,
)
from ftds.view import View


def view(epoch, version, primary="S1", members=("S1", "S2", "S3"), incs=()):
    return View(epoch, version, primary, members, incs=incs)


def test_a_view_naming_an_earlier_process_of_this_replica_as_primary_is_refused():
    """A restarted, empty S1 never orders on the strength of a view made for the process that
    held the state."""
    made_for_old = view(3, 0, incs=(("S1", "old"), ("S2", "b")))
    verdict = judge_view(view(2, 1), made_for_old, "S1", "new")
    assert verdict.take is Take.REFUSE and verdict.newer
    assert judge_view(view(4, 0), made_for_old, "S1", "new").newer is False
    assert judge_view(None, made_for_old, "S1", "old").take is Take.ADOPT


def test_views_only_move_forward():
    held = view(3, 2)
    assert judge_view(held, view(3, 1), "S2", "i").take is Take.KNOWN
    assert judge_view(held, view(2, 9), "S2", "i").take is Take.KNOWN
    same = judge_view(held, view(3, 2), "S2", "i")
    assert same.take is Take.KNOWN and same.same
    assert judge_view(held, view(3, 3), "S2", "i").take is Take.ADOPT


@pytest.mark.parametrize(("held", "new", "me", "new_epoch", "lead", "counted"), [
    (None, view(1, 0), "S1", True, True, True),
    (view(1, 0), view(1, 1, members=("S1", "S2")), "S3", False, False, False),
    (view(1, 0), view(2, 0, primary="S2"), "S1", True, False, True),
    (view(2, 0, primary="S2"), view(2, 1, primary="S2"), "S2", False, True, True),
])
def test_what_taking_a_view_means(held, new, me, new_epoch, lead, counted):
    verdict = judge_view(held, new, me, "i")
    assert verdict.take is Take.ADOPT
    assert (verdict.new_epoch, verdict.lead, verdict.counted) == (new_epoch, lead, counted)


def test_a_member_counted_as_another_process_is_not_counted():
    verdict = judge_view(None, view(2, 0, primary="S2", incs=(("S3", "old"),)), "S3", "new")
    assert verdict.take is Take.ADOPT and not verdict.counted


def test_the_view_change_waits_for_every_ready_member():
    assert recovery_step(("S2", "S3"), {"S2": (9, True)}, 5) == WaitForMembers(("S3",))


def test_the_view_change_fetches_from_the_ready_member_with_the_longest_history():
    subscribed = {"S2": (7, True), "S3": (9, True), "S4": (20, False)}
    assert recovery_step(("S2", "S3"), subscribed, 5) == FetchFrom("S3", 5)
    assert recovery_step(("S2", "S3"), {"S2": (9, True), "S3": (9, True)}, 5) == \
        FetchFrom("S2", 5), "the first of equals"


def test_the_view_change_ends_when_no_ready_member_is_ahead():
    assert recovery_step(("S2",), {"S2": (5, True), "S4": (20, False)}, 5) == Serve()
    assert recovery_step((), {}, 0) == Serve()


LOG = {"seq": 20, "log_base": 10, "checkpoint_seq": 10}


def test_a_ready_member_whose_last_entry_matches_ours_gets_the_log():
    assert catchup_from_log(trusted=True, held=15, held_epoch=2, epoch_at=2, **LOG)
    assert catchup_from_log(trusted=True, held=0, held_epoch=0, epoch_at=None, **LOG)
    assert catchup_from_log(trusted=True, held=10, held_epoch=1, epoch_at=None, **LOG), \
        "exactly at our last checkpoint, the base of our log"


@pytest.mark.parametrize(("trusted", "held", "held_epoch", "epoch_at"), [
    (False, 15, 2, 2),  # a newborn's log is not known to be a prefix of ours
    (True, 15, 1, 2),  # its entry at 15 was written in another epoch: its tail may differ
    (True, 25, 2, None),  # it holds more than we do
    (True, 5, 1, None),  # before our log: truncated
])
def test_anything_else_gets_a_checkpoint(trusted, held, held_epoch, epoch_at):
    assert not catchup_from_log(trusted=trusted, held=held, held_epoch=held_epoch,
                                epoch_at=epoch_at, **LOG)


def test_the_epoch_gate_lets_only_the_current_epoch_act_and_views_through():
    for kind in ("entries", "catchup", "checkpoint", "cp_part", "commit", "fetch", "fetched",
                 "subscribe", "ack", "lease"):
        assert admits(kind, 4, 4)
        assert not admits(kind, 3, 4), f"{kind} of a deposed epoch"
        assert not admits(kind, 5, 4), f"{kind} of an epoch this replica has not taken"
    assert admits("view", 1, 9), "a view is judged by its (epoch, version)"
    with pytest.raises(ValueError):
        admits("req", 4, 4)


def test_a_message_of_a_later_epoch_waits_for_the_view_an_older_one_never_comes_due():
    assert may_come_due(5, 4) and may_come_due(4, 4)
    assert not may_come_due(3, 4)
