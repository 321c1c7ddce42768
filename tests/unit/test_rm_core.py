"""The RM's decisions (``ftds.rm.core``) driven by typed events, with the effects checked.

No sockets, files or clocks: each test feeds the core a GFD membership, replica reports, lease
requests, operator commands and ticks at chosen times, and asserts the effects it returns (the
record to persist, the views to send, the answers, the log lines) and their order.
"""

from __future__ import annotations

import logging
from typing import Any

from ftds.rm import core
from ftds.rm.core import (
    BOOTSTRAP_WAIT,
    LEASE_MARGIN,
    ForcePrimary,
    GfdChange,
    Hold,
    LeaseRequest,
    Membership,
    Reconfigured,
    Release,
    ReplicaReport,
    Report,
    RmCore,
    Settings,
    Tick,
)
from ftds.rm.store import RmRecord
from ftds.view import View

IDS = ("S1", "S2", "S3")
T0 = 1000.0  # the core's start, monotonic


def new_core(record: RmRecord | None = None, lease: float = 2.0) -> RmCore:
    return RmCore(Settings(IDS, "passive", lease), record or RmRecord(), T0)


def report(rid: str, inc: str, *, seq: int = 0, view: View | None = None, first: bool = False,
           **extra: Any) -> Report:
    fields = {"t": "report", "e": view.epoch if view else 0, "id": rid, "incarnation": inc,
              "seq": seq, "commit": 0, "view": view.to_wire() if view else None,
              "caught_up": True, "upstream": None, "recovering": False, **extra}
    return Report(rid, ReplicaReport.from_wire(fields), first)


def membership(*members: str, changes: tuple[GfdChange, ...] = ()) -> Membership:
    return Membership(members, True, changes)


def lost(rid: str, *, confirmed_dead: bool, reason: str) -> GfdChange:
    return GfdChange("delete", rid, confirmed_dead=confirmed_dead, reason=reason, at=5.0)


def of(effects: list[core.Effect], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def lines(effects: list[core.Effect], level: int | None = None) -> list[str]:
    return [e.text for e in of(effects, core.Log) if level is None or e.level == level]


def views_sent(effects: list[core.Effect]) -> list[View]:
    return [e.view for e in of(effects, core.SendView)]


def serving(rm: RmCore, now: float = T0 + 1) -> View:
    """Every replica up and fresh: the bootstrap makes S1 primary of epoch 1 over all three."""
    rm.step(membership(*IDS), now)
    for rid in IDS:
        effects = rm.step(report(rid, f"i-{rid}"), now)
    [view] = views_sent(effects)
    return view


# ====================================================================== bootstrap ====
def test_bootstrap_persists_the_first_view_before_sending_it():
    rm = new_core()
    rm.step(membership(*IDS), T0)
    assert not views_sent(rm.step(report("S1", "i-S1"), T0))
    assert not views_sent(rm.step(report("S2", "i-S2"), T0)), "epoch 1 waits for everyone"
    effects = rm.step(report("S3", "i-S3"), T0 + 0.5)
    persist = [i for i, e in enumerate(effects) if isinstance(e, core.Persist)]
    send = [i for i, e in enumerate(effects) if isinstance(e, core.SendView)]
    assert persist and send and persist[0] < send[0], effects
    record = effects[persist[0]].record
    assert record.epoch == 1 and record.confirmed == list(IDS)
    view = effects[send[0]].view
    assert (view.epoch, view.primary, view.members) == (1, "S1", IDS)
    assert dict(view.incs) == {r: f"i-{r}" for r in IDS}
    assert "RM: bootstrap: S1 orders epoch 1 over S1, S2, S3 -> view epoch 1.0: primary S1, " \
           "ready S1, S2, S3" in lines(effects, logging.INFO)


def test_bootstrap_starts_without_a_silent_replica_after_its_wait():
    rm = new_core()
    rm.step(membership("S1", "S2"), T0)
    rm.step(report("S1", "i-S1"), T0)
    rm.step(report("S2", "i-S2"), T0)
    assert not views_sent(rm.step(Tick(), T0 + BOOTSTRAP_WAIT - 0.01))
    effects = rm.step(Tick(), T0 + BOOTSTRAP_WAIT)
    assert [v.members for v in views_sent(effects)] == [("S1", "S2")]
    assert of(rm.step(Tick(), T0 + BOOTSTRAP_WAIT), core.Relaunch) == [core.Relaunch(("S3",))]


def test_bootstrap_waits_when_its_record_shows_data_existed():
    """A restarted RM whose record names a view never starts a new epoch over empty replicas:
    it waits, and says which data it waits for."""
    old = View(4, 2, "S2", ("S2", "S3"), incs=(("S2", "x"), ("S3", "y")))
    rm = new_core(RmRecord(epoch=4, view=old.to_wire(), committed_seq=180,
                           confirmed=["S2", "S3"]))
    assert rm.view == old
    rm.step(membership(*IDS), T0)
    effects: list[core.Effect] = []
    for rid in IDS:
        effects += rm.step(report(rid, f"new-{rid}"), T0 + BOOTSTRAP_WAIT + 1)
    effects += rm.step(Tick(), T0 + BOOTSTRAP_WAIT + 2)
    # The restarted backup leaves the view; no new epoch is made over the empty processes.
    assert [(v.key, v.primary, v.members) for v in views_sent(effects)] == [
        ((4, 3), "S2", ("S2",))]
    assert [p.record.epoch for p in of(effects, core.Persist)] == [4]
    assert rm.view.epoch == 4 and not rm.confirmed
    [error] = lines(effects, logging.ERROR)
    assert error.startswith("RM: unavailable rather than lossy: no ready backup holds the data "
                            "of epoch 4")
    assert "holds the data of epoch 4" in rm.unavailable


# ======================================================================= failover ====
def test_failover_promotes_the_ready_member_with_the_highest_applied_seq():
    rm = new_core()
    view = serving(rm)
    rm.step(report("S2", "i-S2", seq=10, view=view), T0 + 2)
    rm.step(report("S3", "i-S3", seq=12, view=view), T0 + 2)
    effects = rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=True, reason="exited"),)), T0 + 3)
    [new] = views_sent(effects)
    assert (new.epoch, new.primary, new.members) == (2, "S3", ("S2", "S3"))
    assert lines(effects, logging.WARNING) == [
        "RM: S1: primary lost (exited); process exit confirmed: failing over now"]
    assert "RM: S3 is the new primary (highest applied seq 12), epoch 2 -> view epoch 2.0: " \
           "primary S3, ready S2, S3" in lines(effects, logging.INFO)
    assert core.MarkIncident("S1", "new_primary", new_primary_id="S3") in effects
    assert of(effects, core.Persist)[-1].record.epoch == 2


def test_failover_breaks_a_tie_in_seq_by_the_lowest_id():
    rm = new_core()
    view = serving(rm)
    rm.step(report("S2", "i-S2", seq=7, view=view), T0 + 2)
    rm.step(report("S3", "i-S3", seq=7, view=view), T0 + 2)
    effects = rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=True, reason="exited"),)), T0 + 3)
    assert [v.primary for v in views_sent(effects)] == ["S2"]


def test_a_relaunched_replica_is_no_holder_and_never_leads_while_a_holder_may_exist():
    rm = new_core()
    view = serving(rm)
    effects = rm.step(report("S2", "relaunched", view=None), T0 + 2)
    assert "RM: S2 restarted (incarnation i-S2 -> relaunched): it no longer holds the data" \
        in lines(effects, logging.WARNING)
    assert [v.members for v in views_sent(effects)] == [("S1", "S3")]
    assert "S2" not in rm.confirmed
    effects = rm.step(report("S3", "relaunched-too", view=None), T0 + 2)
    assert [v.members for v in views_sent(effects)] == [("S1",)]
    # The primary dies: only empty processes are left, and S1 may come back with the data.
    effects = rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=True, reason="exited"),)), T0 + 3)
    effects += rm.step(Tick(), T0 + 60)
    assert not views_sent(effects), "an empty replica was made primary"
    assert rm.view is not None and rm.view.primary == "S1" and rm.view.epoch == view.epoch
    reason = ("no ready backup holds the data of epoch 1; waiting for one (unavailable rather "
              "than lossy; `ftds ctl force-primary <id> --accept-data-loss` overrides)")
    assert lines(effects, logging.ERROR) == [f"RM: unavailable rather than lossy: {reason}"]
    assert rm.unavailable == reason and rm.decisions["S1"] == reason


def test_a_restarted_primary_is_a_lost_primary_replaced_at_once():
    rm = new_core(lease=5.0)
    view = serving(rm)
    effects = rm.step(report("S1", "relaunched"), T0 + 2)  # its LFD may not have seen it yet
    [new] = views_sent(effects)
    assert new.epoch == view.epoch + 1 and new.primary in ("S2", "S3")
    assert "S1" not in new.members
    assert "RM: S1: primary lost (restarted without its state); process exit confirmed: " \
           "failing over now" in lines(effects, logging.WARNING)


def test_a_hung_primary_is_replaced_only_after_the_longest_lease_granted():
    rm = new_core(lease=2.0)
    view = serving(rm)
    rm.step(report("S1", "i-S1", view=view, vouched=[1, 0]), T0 + 1)
    effects = rm.step(LeaseRequest("S1", 7, view.epoch), T0 + 4)
    assert of(effects, core.Reply) == [core.Reply("lease", {"n": 7, "duration": 2.0}, 1)]
    [persist] = of(effects, core.Persist)
    assert persist.record.lease_max == 2.0, "the grant must be on record before it is sent"
    assert effects.index(persist) < effects.index(of(effects, core.Reply)[0])
    # A shorter lease from a reload does not shorten the wait for the one granted.
    rm.step(Reconfigured(Settings(IDS, "passive", 0.1)), T0 + 4)
    effects = rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=False, reason="heartbeats missed"),)), T0 + 4.5)
    wait_until = T0 + 4 + 2.0 + LEASE_MARGIN
    assert rm.failover is not None and rm.failover.not_before == wait_until
    assert lines(effects, logging.WARNING) == [
        "RM: S1: primary lost (heartbeats missed); waiting out its lease (1600 ms) first"]
    assert not views_sent(effects)
    assert not rm.step(LeaseRequest("S1", 8, view.epoch), T0 + 4.6), "no lease while replaced"
    assert not views_sent(rm.step(Tick(), wait_until - 0.001))
    [new] = views_sent(rm.step(Tick(), wait_until))
    assert new.epoch == 2 and new.primary in ("S2", "S3")


def test_a_primary_back_before_being_replaced_is_not_shown_as_lost():
    """A primary the LFD took for hung came back (same process) before the lease ran out: no
    failover, but `ftds status` went on showing it as "primary lost; waiting out its lease",
    or "no ready backup holds the data", while it was the ready primary."""
    rm = new_core(lease=2.0)
    view = serving(rm)
    rm.step(report("S1", "i-S1", view=view), T0 + 1)
    rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=False, reason="heartbeats missed"),)), T0 + 1.5)
    assert "waiting out its lease" in rm.decisions["S1"]
    rm.step(membership(*IDS), T0 + 1.7)
    effects = rm.step(report("S1", "i-S1", view=view), T0 + 1.8)  # heard from again
    assert rm.failover is None and not views_sent(effects)
    assert rm.decisions["S1"] == "back before being replaced (same process); no failover"
    assert of(effects, core.StatusChanged)


def test_a_primary_back_while_no_holder_could_replace_it_ends_the_unavailability():
    rm = new_core(lease=2.0)
    view = serving(rm)
    rm.step(report("S1", "i-S1", view=view), T0 + 1)
    rm.step(membership(changes=(lost("S1", confirmed_dead=False, reason="hung"),
                                lost("S2", confirmed_dead=False, reason="hung"),
                                lost("S3", confirmed_dead=False, reason="hung"))), T0 + 1.5)
    rm.step(Tick(), T0 + 5)  # past its lease, and no holder to promote
    assert rm.unavailable.startswith("no ready backup holds the data")
    rm.step(membership("S1"), T0 + 5.1)  # the primary back first, its backups still away
    rm.step(report("S1", "i-S1", view=view), T0 + 5.2)
    assert rm.failover is None and rm.unavailable == ""
    assert rm.decisions["S1"] == "back before being replaced (same process); no failover"


def test_a_restarted_rm_waits_out_the_longest_lease_ever_granted():
    rm = new_core(RmRecord(epoch=3, lease_max=7.0), lease=0.5)
    assert rm.lease_expiry == T0 + 7.0


def test_a_confirmed_exit_during_the_lease_wait_ends_the_wait():
    rm = new_core(lease=2.0)
    serving(rm)
    rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=False, reason="hung"),)), T0 + 1.5)
    assert rm.failover is not None and rm.failover.not_before > T0 + 1.6
    effects = rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=True, reason="exited"),)), T0 + 1.6)
    assert [v.epoch for v in views_sent(effects)] == [2]


# ======================================================================= operator ====
def test_force_primary_needs_accept_data_loss():
    rm = new_core()
    view = serving(rm)
    rm.step(report("S2", "relaunched"), T0 + 2)
    rm.step(report("S3", "relaunched"), T0 + 2)
    rm.step(membership("S2", "S3", changes=(
        lost("S1", confirmed_dead=True, reason="exited"),)), T0 + 3)
    assert rm.unavailable
    effects = rm.step(ForcePrimary("S2", accept_data_loss=False, at=1.5e9), T0 + 4)
    assert effects == [core.Reply("error", {
        "code": "refused",
        "message": "force-primary needs accept_data_loss: it may lose acknowledged writes"},
        view.epoch)]
    effects = rm.step(ForcePrimary("S9", accept_data_loss=True, at=1.5e9), T0 + 4)
    assert [r.fields["code"] for r in of(effects, core.Reply)] == ["unknown_replica"]
    assert not views_sent(effects) and rm.view.epoch == view.epoch

    effects = rm.step(ForcePrimary("S2", accept_data_loss=True, at=1.5e9), T0 + 4)
    [new] = views_sent(effects)
    assert (new.epoch, new.primary, new.members) == (2, "S2", ("S2",))
    [critical] = lines(effects, logging.CRITICAL)
    assert critical.startswith("RM: operator forced S2 (seq 0) to be the primary of epoch 2")
    [persist] = of(effects, core.Persist)
    assert persist.record.forced[-1] == {"at": 1.5e9, "replica": "S2", "epoch": 2, "seq": 0,
                                         "committed_seq": 0}
    assert effects.index(persist) < effects.index(of(effects, core.SendView)[0])
    [reply] = of(effects, core.Reply)
    assert reply.kind == "ok" and reply.fields["epoch"] == 2
    assert not rm.unavailable and rm.failover is None


def test_force_primary_refuses_a_replica_that_is_not_up():
    rm = new_core()
    serving(rm)
    rm.step(membership("S1", "S2"), T0 + 2)
    effects = rm.step(ForcePrimary("S3", accept_data_loss=True, at=0.0), T0 + 2)
    assert [r.fields["code"] for r in of(effects, core.Reply)] == ["not_present"]
    assert not views_sent(effects)


def test_a_held_replica_is_not_relaunched_until_released():
    rm = new_core()
    serving(rm)
    assert of(rm.step(membership("S1", "S3"), T0 + 2), core.Relaunch) == [
        core.Relaunch(("S2",))]
    effects = rm.step(Hold("S2", "  disk swap ", at=1.7e9), T0 + 2)
    [persist] = of(effects, core.Persist)
    assert persist.record.held == {"S2": {"reason": "disk swap", "at": 1.7e9}}
    assert lines(effects, logging.WARNING) == [
        "RM: S2 held by an operator (disk swap): it will not be relaunched until "
        "'ftds ctl release S2'"]
    assert of(effects, core.Reply) == [core.Reply(
        "ok", {"replica": "S2", "reason": "disk swap", "present": False}, 1)]
    assert not of(rm.step(Tick(), T0 + 30), core.Relaunch), "a held replica was relaunched"

    effects = rm.step(Release("S2"), T0 + 31)
    kinds = [type(e) for e in effects]
    assert kinds.index(core.Persist) < kinds.index(core.ResetRelaunchBudget) \
        < kinds.index(core.Reply)
    assert not of(effects, core.Persist)[0].record.held
    assert of(rm.step(Tick(), T0 + 31), core.Relaunch) == [core.Relaunch(("S2",))]


def test_hold_and_release_name_what_is_wrong():
    rm = new_core()
    codes = [r.fields["code"] for event in (Hold("S9", "x", at=0.0), Release("S2"),
                                            Hold("S2", "x" * 1000, at=0.0),
                                            Hold("S2", "two\nlines", at=0.0))
             for r in of(rm.step(event, T0), core.Reply)]
    assert codes == ["unknown_replica", "not_held", "bad_reason", "bad_reason"]
    assert not rm.record.held


# ==================================================================== the wire's side ====
def test_a_replica_that_was_away_is_told_the_view_on_its_welcome():
    rm = new_core()
    first = serving(rm)
    [current] = views_sent(rm.step(report("S2", "relaunched"), T0 + 2))
    assert current.key == (1, 1)
    effects = rm.step(report("S3", "i-S3", view=first, first=True), T0 + 2)
    assert of(effects, core.Reply) == [core.Reply("view", {"view": current.to_wire()}, 1)]
    effects = rm.step(report("S3", "i-S3", view=current, first=True), T0 + 2)
    assert not of(effects, core.Reply), "a replica with the view in force is not told again"


def test_a_malformed_view_on_a_welcome_closes_that_connection_after_what_came_before():
    rm = new_core()
    serving(rm)
    effects = rm.step(Report("S3", ReplicaReport(incarnation="i-S3", view={"epoch": "x"}), True),
                      T0 + 2)
    assert isinstance(effects[-1], core.Reject) and effects[-1].code == "malformed"


# ================================================================ admission, removal ====
def test_a_removed_backup_is_admitted_on_a_fresh_report_and_electable_once_vouched_for():
    rm = new_core()
    first = serving(rm)
    effects = rm.step(core.Lagging("S1", first.epoch, ("S3",), "no ack for 2 s"), T0 + 2)
    [removed] = views_sent(effects)
    assert removed.members == ("S1", "S2") and "S3" not in rm.confirmed
    assert effects.index(core.MarkIncident("S3", "removed")) < effects.index(
        of(effects, core.SendView)[0])
    # Its report from before the removal (caught up in the old version) is stale.
    stale = report("S3", "i-S3", view=first, upstream="S1")
    assert not views_sent(rm.step(stale, T0 + 2))
    effects = rm.step(report("S3", "i-S3", view=removed, upstream="S1"), T0 + 3)
    [admitting] = of(effects, core.SendView)
    assert admitting.view.members == IDS and admitting.primary_first
    assert "RM: admitting S3 -> view epoch 1.2: primary S1, ready S1, S2, S3" \
        in lines(effects, logging.INFO)
    assert "S3" not in rm.confirmed, "electable before the primary vouched for it"
    # The primary vouches for the previous version only: not yet.
    rm.step(report("S1", "i-S1", view=admitting.view, vouched=[1, 1]), T0 + 3)
    assert "S3" not in rm.confirmed
    effects = rm.step(report("S1", "i-S1", view=admitting.view, vouched=[1, 2]), T0 + 3)
    assert "S3" in rm.confirmed
    assert of(effects, core.Persist)[0].record.confirmed == list(IDS)
    assert core.MarkIncident("S3", "ready") in effects


def test_lagging_from_anyone_but_the_current_primary_changes_nothing():
    rm = new_core()
    view = serving(rm)
    assert not rm.step(core.Lagging("S2", view.epoch, ("S3",), "x"), T0 + 2)
    assert not rm.step(core.Lagging("S1", view.epoch - 1, ("S3",), "x"), T0 + 2)
    rm.step(report("S1", "relaunched-S1", view=None), T0 + 2)  # a new process on its ports
    assert rm.view.primary != "S1"
    assert not views_sent(rm.step(core.Lagging("S1", view.epoch, ("S2",), "x"), T0 + 2))


def test_a_restarted_rm_adopts_a_newer_view_and_never_an_older_one():
    recorded = View(3, 0, "S3", ("S2", "S3"), incs=(("S2", "b"), ("S3", "c")))
    rm = new_core(RmRecord(epoch=3, view=recorded.to_wire(), confirmed=["S2", "S3"]))
    rm.step(membership(*IDS), T0)
    older = View(2, 0, "S2", ("S2", "S3"), incs=(("S2", "b"), ("S3", "c")))
    effects = rm.step(report("S2", "b", seq=9, view=older, first=True), T0)
    assert rm.view == recorded
    assert of(effects, core.Reply) == [core.Reply("view", {"view": recorded.to_wire()}, 3)]
    newer = View(3, 1, "S3", ("S2", "S3"), incs=(("S2", "b"), ("S3", "c")))
    effects = rm.step(report("S3", "c", seq=9, view=newer), T0)
    assert rm.view == newer and rm.confirmed == {"S2", "S3"}
    [persist] = of(effects, core.Persist)
    assert persist.record.view == newer.to_wire()
    assert effects.index(persist) < effects.index(of(effects, core.Log)[0])
    assert lines(effects)[0] == ("RM: adopted view epoch 3.1: primary S3, ready S2, S3 "
                                 "(reported by S3)")


def test_a_report_reads_a_field_of_the_wrong_type_as_not_given():
    parsed = ReplicaReport.from_wire({"incarnation": 5, "seq": "12", "commit": True,
                                      "vouched": None, "i_am_ready": 1, "view": [1]})
    assert (parsed.incarnation, parsed.seq, parsed.commit) == (None, None, None)
    assert parsed.vouches and parsed.vouched is None, "a primary that has vouched for nothing"
    assert parsed.i_am_ready == 1 and parsed.view_fields == {}
    assert not ReplicaReport.from_wire({"seq": 3}).vouches
    assert ReplicaReport.from_wire({"vouched": [4, 2]}).vouched == (4, 2)


# ============================================================ replicas removed from the file ====
def test_the_primary_removed_from_the_cluster_file_is_replaced_after_its_lease():
    """An operator removes the primary's entry and reloads the RM: it is treated as gone (its
    process may still run until its lease ends), never as a crash of the RM's decisions."""
    rm = new_core(lease=0.5)
    view = serving(rm)
    for rid in IDS:
        rm.step(report(rid, f"i-{rid}", seq=10, view=view), T0 + 2)
    rm.step(LeaseRequest("S1", 1, view.epoch), T0 + 2)
    effects = rm.step(Reconfigured(Settings(("S2", "S3"), "passive", 0.5)), T0 + 2.1)
    assert not views_sent(effects), "replaced before its lease ran out"
    assert "removed from the cluster file" in rm.decisions["S1"]
    assert core.Relaunch(("S1",)) not in of(effects, core.Relaunch)
    rm.step(membership(*IDS), T0 + 2.2)  # its LFD still runs: present to the GFD
    effects = rm.step(Tick(), T0 + 2.6 + LEASE_MARGIN)
    [new] = views_sent(effects)
    assert (new.epoch, new.primary, new.members) == (view.epoch + 1, "S2", ("S2", "S3"))
    assert "S1" not in rm.replicas  # no view names it any more
    effects = rm.step(Tick(), T0 + 5)
    assert not views_sent(effects) and not of(effects, core.Relaunch)


def test_an_rm_started_on_a_file_without_its_records_primary_replaces_it():
    old = View(4, 2, "S1", IDS, incs=tuple((r, f"i-{r}") for r in IDS))
    rm = RmCore(Settings(("S2", "S3"), "passive", 0.5),
                RmRecord(epoch=4, view=old.to_wire(), committed_seq=10, confirmed=list(IDS)), T0)
    rm.step(membership("S2", "S3"), T0)
    for rid in ("S2", "S3"):
        rm.step(report(rid, f"i-{rid}", seq=10, view=old), T0 + 0.1)
    effects = rm.step(Tick(), T0 + 0.6 + LEASE_MARGIN)
    [new] = views_sent(effects)
    assert (new.epoch, new.primary, new.members) == (5, "S2", ("S2", "S3"))


def test_a_backup_removed_from_the_cluster_file_leaves_the_ready_set():
    rm = new_core()
    view = serving(rm)
    for rid in IDS:
        rm.step(report(rid, f"i-{rid}", seq=10, view=view), T0 + 2)
    effects = rm.step(Reconfigured(Settings(("S1", "S2"), "passive", 2.0)), T0 + 3)
    [new] = views_sent(effects)
    assert (new.epoch, new.primary, new.members) == (view.epoch, "S1", ("S1", "S2"))
    assert not of(effects, core.Relaunch)
    assert "S3" not in rm.replicas
