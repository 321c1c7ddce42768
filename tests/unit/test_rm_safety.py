"""The Replication Manager's safety rules, driven by hand: no sockets, no GFD, no replicas.

Each test sets the RM's inputs (membership, replica reports, its record on disk) and checks the
view it decides, or that it waits. These are the defects of "Never lose an acknowledged write":
an empty replica leading, a restarted RM bootstrapping over empty replicas, lagging reports from
a deposed primary, crash records that outlive the crash, leases cut short, and an epoch file that
is not durable or reads as zero when corrupt.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from ftds import local, supervise
from ftds.config import ConfigError
from ftds.rm import core
from ftds.rm.manager import ReplicationManager
from ftds.rm.store import FILE_NAME, RmRecord, RmStore
from ftds.view import View

IDS = ["S1", "S2", "S3"]


class FakeConn:
    role = "rm"

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.sent: list[tuple[str, dict]] = []

    def send(self, kind, fields=None):
        self.sent.append((kind, fields or {}))

    def close(self):
        pass

    def is_closing(self):
        return False


@pytest.fixture
def make_rm(tmp_path):
    def make(record: RmRecord | None = None, tunables=None):
        path = local.write_cluster(tmp_path, 3, base=42000, tunables=tunables or {})
        if record is not None:
            RmStore(tmp_path).save(record)
        rm = ReplicationManager(str(path))
        rm.relaunched = []
        rm.relauncher.tick = rm.relaunched.append  # relaunches are not under test here
        return rm
    return make


def decided(rm, decision, *args):
    """Run one of the core's decisions directly and carry out its effects, as a step would."""
    rm.core._out = []
    decision(*args)
    for effect in rm.core._out:
        rm._carry_out(effect, None)


def report(rm, rid, *, inc, seq=0, view=None, caught_up=True, e=None, commit=0, upstream=None):
    rm.core.replicas[rid].present = True
    msg = {"t": "report", "e": e if e is not None else (view.epoch if view else 0),
           "id": rid, "incarnation": inc, "seq": seq, "commit": commit,
           "view": view.to_wire() if view else None, "caught_up": caught_up,
           "upstream": upstream, "recovering": False}
    rm._on_report(rm.links[rid], FakeConn(rid), msg, first=False)


def stable(rm, members):
    rm.gfd = {"view": 1, "members": list(members), "stable": True, "lfds": {}}
    rm.core.gfd_stable = True
    for rid, info in rm.core.replicas.items():
        info.present = rid in members


def serving(rm, *, primary="S1", members=IDS, epoch=2):
    """An RM whose view (made for incarnations a-S1...) is in force and confirmed."""
    stable(rm, IDS)
    for rid in IDS:
        rm.core.replicas[rid].incarnation = f"a-{rid}"
    view = rm.core._make_view(epoch, 0, primary, list(members))
    rm.core.confirmed = set(members)
    decided(rm, rm.core._issue, view, "test")
    return view


def test_first_start_bootstraps_over_fresh_replicas(make_rm):
    rm = make_rm()
    stable(rm, IDS)
    for rid in IDS:
        report(rm, rid, inc=f"i-{rid}")
    assert rm.view is not None and rm.view.primary == "S1" and rm.view.epoch == 1
    assert dict(rm.view.incs) == {r: f"i-{r}" for r in IDS}
    assert RmStore(rm.state_dir).load().view["epoch"] == 1  # on disk before it was sent


def test_restarted_rm_never_bootstraps_over_empty_replicas_when_data_existed(make_rm):
    old = View(4, 2, "S2", ("S2", "S3"), incs=(("S2", "x"), ("S3", "y")))
    rm = make_rm(RmRecord(epoch=4, view=old.to_wire(), committed_seq=180_000))
    stable(rm, IDS)
    rm.core.started -= 10  # past the wait for every replica
    for rid in IDS:
        report(rm, rid, inc=f"new-{rid}")  # fresh processes: seq 0, no view
    assert rm.view.epoch == 4 and rm.view.primary == "S2", \
        "a new epoch over empty replicas, while data may exist"
    assert not rm.core.confirmed, "a fresh process counted as holding the data"
    assert "holds the data of epoch 4" in rm.unavailable
    assert rm.status(rm.gfd)["unavailable"]


def test_returning_holder_is_adopted_after_an_rm_restart(make_rm):
    old = View(4, 2, "S2", ("S2", "S3"), incs=(("S2", "x"), ("S3", "y")))
    rm = make_rm(RmRecord(epoch=4, view=old.to_wire()))
    stable(rm, IDS)
    report(rm, "S2", inc="x", seq=50, view=old)
    report(rm, "S3", inc="y", seq=50, view=old)
    report(rm, "S2", inc="x", seq=50, view=old)  # the primary's next report confirms S3
    assert rm.view == old and rm.core.confirmed == {"S2", "S3"}


def test_restarted_primary_is_lost_and_an_empty_one_never_leads(make_rm):
    rm = make_rm()
    view = serving(rm, members=["S1"])  # backups were dropped from the ready set
    report(rm, "S2", inc="a-S2", seq=10, view=view)
    report(rm, "S3", inc="a-S3", seq=10, view=view)
    report(rm, "S1", inc="relaunched", seq=0)  # kill -9, relaunched at once
    rm.decide()
    assert rm.view.primary == "S1" and rm.view.epoch == view.epoch, rm.view
    assert rm.failover is not None, "a restarted primary was taken for the one it lost"
    assert "no ready backup holds the data" in rm.unavailable
    # The override names the loss and starts a new epoch on the operator's choice.
    conn = FakeConn("ctl")
    rm._force_primary(conn, "S2", accept_data_loss=False)
    assert conn.sent[-1][0] == "error"
    rm._force_primary(conn, "S2", accept_data_loss=True)
    kind, reply = conn.sent[-1]
    assert kind == "ok" and reply["epoch"] == view.epoch + 1
    assert (rm.view.primary, rm.view.members) == ("S2", ("S2",))
    assert not rm.unavailable


def test_restarted_primary_fails_over_to_a_holder_without_waiting(make_rm):
    rm = make_rm(tunables={"lease": 5.0})
    view = serving(rm)
    report(rm, "S1", inc="relaunched")
    rm.decide()
    assert rm.view.epoch == view.epoch + 1 and rm.view.primary in ("S2", "S3")
    assert "S1" not in rm.view.members


def test_restarted_backup_leaves_the_ready_set_and_is_not_electable(make_rm):
    rm = make_rm()
    view = serving(rm)
    report(rm, "S1", inc="a-S1", seq=5, view=view)
    report(rm, "S3", inc="relaunched")
    assert "S3" not in rm.view.members and "S3" not in rm.core.confirmed
    # The primary confirming the old version does not bring the new process back in.
    report(rm, "S1", inc="a-S1", seq=5, view=view)
    assert "S3" not in rm.core.confirmed


def test_lagging_report_from_a_deposed_primary_is_ignored(make_rm):
    rm = make_rm()
    view = serving(rm, primary="S2", epoch=3)
    info = rm.links["S1"]
    rm._on_replica_message(FakeConn("S1"), {"t": "lagging", "e": 2, "members": ["S3"]})
    assert rm.view == view, "a deposed primary shrank the ready set"
    rm._on_replica_message(FakeConn("S2"), {"t": "lagging", "e": 2, "members": ["S3"]})
    assert rm.view == view, "a lagging report of an older epoch shrank the ready set"
    rm._on_replica_message(FakeConn("S2"), {"t": "lagging", "e": 3, "members": ["S3"]})
    assert "S3" not in rm.view.members
    assert info.spec.id == "S1"


def test_lease_grants_carry_the_epoch_and_a_reload_never_shortens_the_wait(make_rm):
    rm = make_rm(tunables={"lease": 2.0})
    view = serving(rm)
    conn = FakeConn("S1")
    rm._on_lease_request(rm.links["S1"], conn, {"t": "lease_req", "n": 1, "e": view.epoch})
    assert conn.sent and conn.sent[-1][0] == "lease"
    granted_at = time.monotonic()
    rm._step(core.Reconfigured(dataclasses.replace(rm.core.settings, lease=0.1)))
    stable(rm, ["S2", "S3"])  # the primary hangs: not confirmed dead
    rm.decide()
    assert rm.failover is not None
    assert rm.failover.not_before >= granted_at + 2.0, "the wait forgot the longer lease"
    assert RmStore(rm.state_dir).load().lease_max == 2.0


def test_restarted_rm_waits_out_the_longest_lease_ever_granted(make_rm):
    before = time.monotonic()
    rm = make_rm(RmRecord(epoch=3, lease_max=7.0), tunables={"lease": 0.5})
    assert rm.core.lease_expiry >= before + 7.0


def test_crash_record_is_cleared_when_the_replica_comes_back(make_rm):
    rm = make_rm(tunables={"lease": 3.0})
    view = serving(rm)
    rm._on_membership({"members": ["S2", "S3"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": True, "reason": "exited"}]})
    assert rm.view.primary != "S1"  # a confirmed crash: no lease wait
    new = rm.view
    rm._on_membership({"members": IDS, "stable": True, "view": 3,
                       "changes": [{"kind": "add", "replica": "S1"}]})
    assert rm.core.replicas["S1"].loss is None
    assert new.primary in ("S2", "S3") and view.epoch < new.epoch


def test_state_file_is_durable(make_rm, monkeypatch, tmp_path):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real(fd)))
    RmStore(tmp_path).save(RmRecord(epoch=9))
    assert str(tmp_path / (FILE_NAME + ".tmp")) in synced
    assert str(tmp_path) in synced, "the rename is not durable without a sync of the directory"
    assert RmStore(tmp_path).load().epoch == 9


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"epoch": -3}', b'{"epoch": "7"}',
                                     b'{"epoch": 2, "view": {"epoch": 2}}'])  # was a WireError
def test_corrupt_state_file_stops_the_rm_with_its_path(make_rm, tmp_path, content):
    (tmp_path / FILE_NAME).write_bytes(content)
    with pytest.raises(ConfigError, match=FILE_NAME):
        make_rm()


def test_a_view_recorded_with_a_member_named_twice_is_read_as_the_same_ready_set(make_rm,
                                                                                 tmp_path):
    """Before views were checked, 'ftds ctl members S1,S1,S2' was taken and recorded; such a
    record must not stop the RM once they are."""
    view = {"epoch": 2, "version": 3, "primary": "S1", "members": ["S1", "S1", "S2", "S1"],
            "lease": 0.0, "incs": {}}
    (tmp_path / FILE_NAME).write_text(json.dumps({"epoch": 2, "view": view}))
    rm = make_rm()
    assert rm.view is not None and rm.view.members == ("S1", "S2")


def test_corrupt_legacy_epoch_file_is_an_error_not_epoch_zero(tmp_path):
    (tmp_path / "epoch").write_text("garbage\n")
    with pytest.raises(ConfigError, match="epoch"):
        RmStore(tmp_path).load()
    (tmp_path / "epoch").write_text("12\n")
    assert RmStore(tmp_path).load().epoch == 12


def test_new_local_cluster_forgets_the_previous_record(tmp_path):
    RmStore(tmp_path).save(RmRecord(epoch=2, view={"epoch": 2}))
    assert local.forget_previous_cluster(tmp_path)
    assert not RmStore(tmp_path).load().data_may_exist
    assert json.dumps(RmStore(tmp_path).load().__dict__)


def test_restarted_rm_promotes_a_holder_when_the_primary_dies_before_reporting(make_rm):
    """RM restart together with a primary crash: the backups' own reports of the view (as the
    processes it counts) make them electable; the dead primary never confirms them again."""
    old = View(3, 1, "S1", tuple(IDS), incs=(("S1", "a"), ("S2", "b"), ("S3", "c")))
    rm = make_rm(RmRecord(epoch=3, view=old.to_wire()))
    stable(rm, ["S2", "S3"])
    report(rm, "S2", inc="b", seq=40, view=old)
    report(rm, "S3", inc="c", seq=41, view=old)
    rm._on_membership({"members": ["S2", "S3"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": True, "reason": "exited"}]})
    assert rm.view.epoch == 4 and rm.view.primary == "S3", rm.view
    assert not rm.unavailable


def test_a_removed_backup_is_admitted_again_only_on_a_report_made_after_its_removal(make_rm):
    """Found by the simulator (a cut between the primary and one backup): the primary asked
    the RM to drop S3, and the RM at once admitted S3 again on its last report, made before the
    removal, while the primary acknowledged writes S3 never received."""
    rm = make_rm()
    serving(rm)
    old = rm.view
    report(rm, "S3", inc="a-S3", seq=40, view=old, caught_up=True, upstream="S1")
    decided(rm, rm.core._remove_members, ["S3"], "S1 reports them unreachable")
    removed = rm.view
    assert "S3" not in removed.members
    rm.decide()
    assert rm.view == removed, "admitted again on a report from before the removal"
    # Its report on the new view, caught up again with the primary's stream: admitted.
    report(rm, "S3", inc="a-S3", seq=45, view=removed, caught_up=True, upstream="S1")
    rm.decide()
    assert "S3" in rm.view.members


def test_an_admitted_backup_is_electable_only_once_the_primary_vouches_for_it(make_rm):
    """The primary confirms a view that adds a member only when that member acknowledged all
    it had committed before: until then the member may miss acknowledged writes."""
    rm = make_rm()
    serving(rm, members=["S1", "S2"])
    view = rm.core._make_view(2, 1, "S1", ["S1", "S2", "S3"])
    decided(rm, rm.core._issue, view, "admitting S3")
    primary_report = {"view": view.to_wire(), "commit": 9, "recovering": False}
    decided(rm, rm.core._note_confirmation, "S1",
            core.ReplicaReport.from_wire({**primary_report, "vouched": [2, 0]}))
    assert "S3" not in rm.core.confirmed
    decided(rm, rm.core._note_confirmation, "S1",
            core.ReplicaReport.from_wire({**primary_report, "vouched": [2, 1]}))
    assert "S3" in rm.core.confirmed
    assert rm.store.load().confirmed == ["S1", "S2", "S3"], "kept for a restarted RM"


def test_restarted_rm_elects_only_members_the_primary_had_vouched_for(make_rm):
    """RM restart with the primary dead: a member admitted but never vouched for (it may miss
    writes the primary acknowledged) is not electable; one that was vouched for is."""
    view = View(3, 2, "S1", tuple(IDS), incs=(("S1", "a"), ("S2", "b"), ("S3", "c")))
    rm = make_rm(RmRecord(epoch=3, view=view.to_wire(), confirmed=["S1", "S2"]))
    stable(rm, ["S2", "S3"])
    report(rm, "S2", inc="b", seq=40, view=view)
    report(rm, "S3", inc="c", seq=41, view=view)
    rm._on_membership({"members": ["S2", "S3"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": True, "reason": "exited"}]})
    assert rm.view.epoch == 4 and rm.view.primary == "S2" and rm.view.members == ("S2",), \
        rm.view


def test_a_restarted_rm_keeps_on_record_the_vouched_members_it_has_not_heard_yet(make_rm):
    """Found by the lab soak (fault 161, RM and primary killed together): the RM restarted, the
    primary reported first and its vouching rewrote the record as only itself (the backups had
    not reported yet); the next RM, with that primary dead, found nobody electable and waited
    forever, while both backups held every write."""
    view = View(5, 1, "S1", tuple(IDS), incs=(("S1", "a"), ("S2", "b"), ("S3", "c")))
    rm = make_rm(RmRecord(epoch=5, view=view.to_wire(), confirmed=list(IDS)))
    stable(rm, IDS)
    report(rm, "S1", inc="a", seq=90, view=view)  # the primary first
    report(rm, "S2", inc="b", seq=90, view=view)
    report(rm, "S3", inc="c", seq=90, view=view)
    assert sorted(RmStore(rm.state_dir).load().confirmed) == IDS

    again = make_rm()  # the RM and the primary die together; a new RM starts
    stable(again, ["S2", "S3"])
    report(again, "S2", inc="b", seq=90, view=view)
    report(again, "S3", inc="c", seq=90, view=view)
    again._on_membership({"members": ["S2", "S3"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": True, "reason": "exited"}]})
    assert not again.unavailable, again.unavailable
    assert again.view.epoch == 6 and again.view.primary == "S2" \
        and again.view.members == ("S2", "S3"), again.view


def test_a_vouched_member_first_heard_as_another_process_is_no_holder(make_rm):
    """The other side of keeping unheard members vouched: one that reports, after the vouching,
    as a process the view does not count (it restarted meanwhile) holds nothing."""
    view = View(5, 1, "S1", tuple(IDS), incs=(("S1", "a"), ("S2", "b"), ("S3", "c")))
    rm = make_rm(RmRecord(epoch=5, view=view.to_wire(), confirmed=list(IDS)))
    stable(rm, IDS)
    report(rm, "S1", inc="a", seq=90, view=view)
    report(rm, "S2", inc="b", seq=90, view=view)
    report(rm, "S3", inc="new", seq=0, view=None)
    assert "S3" not in rm.core.confirmed and rm.view.members == ("S1", "S2"), rm.view


def test_restarted_rm_that_finds_every_replica_gone_starts_them(make_rm):
    """Found by the simulator: the RM restarted after every replica had died; nothing starts a
    replica but the RM, so it waited forever without a word."""
    view = View(2, 0, "S3", ("S3",), incs=(("S3", "c"),))
    rm = make_rm(RmRecord(epoch=2, view=view.to_wire(), confirmed=["S3"]))
    stable(rm, [])
    rm.decide()
    assert rm.relaunched == [["S1", "S2", "S3"]]
    assert rm.view == view


def test_restarted_rm_never_takes_back_an_older_view_a_replica_reports(make_rm):
    """Found by the simulator: the RM died just after making S3 the sequencer of epoch 3; the
    restarted RM adopted the view of epoch 2 that the cut-off old sequencer S2 reported, and S2
    acknowledged writes in epoch 2 that epoch 3 never had."""
    newer = View(3, 0, "S3", ("S3",), incs=(("S3", "c"),))
    rm = make_rm(RmRecord(epoch=3, view=newer.to_wire(), confirmed=["S3"]))
    stable(rm, ["S1", "S2"])
    older = View(2, 0, "S2", ("S2", "S3"), incs=(("S2", "b"), ("S3", "c")))
    conn = FakeConn("S2")
    rm.core.replicas["S2"].present = True
    rm._on_report(rm.links["S2"], conn, {
        "t": "report", "e": 2, "id": "S2", "incarnation": "b", "seq": 230, "commit": 226,
        "view": older.to_wire(), "caught_up": True, "upstream": None, "recovering": False},
        first=True)
    assert rm.view == newer
    assert ("view", {"view": newer.to_wire()}) in conn.sent, "S2 is told of epoch 3"


def test_lost_primary_seen_again_is_back_only_after_it_reports_as_the_same_process(make_rm):
    """Found by the simulator: the GFD saw the lost primary again (a new, empty process on its
    ports) and the RM, before that process's first report, called it "back", cancelled the
    failover and admitted a replica that had caught up with the empty process."""
    rm = make_rm()
    serving(rm)
    rm._on_membership({"members": ["S2", "S3"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": False, "reason": "hung"}]})
    assert rm.failover is not None and rm.failover.old_primary == "S1"
    rm._on_membership({"members": IDS, "stable": True, "view": 3, "changes": [
        {"kind": "add", "replica": "S1"}]})
    assert rm.failover is not None, "called back on the GFD's word alone"
    report(rm, "S1", inc="a-S1", seq=10, view=rm.view)
    assert rm.failover is None, "its own report as the same process: back"


def test_unavailable_reason_stays_while_a_view_shrinks(make_rm):
    rm = make_rm()
    serving(rm, members=["S1", "S2"])
    rm.core.confirmed = {"S1"}  # S2 was admitted but never vouched for
    rm._on_membership({"members": ["S2"], "stable": True, "view": 2, "changes": [
        {"kind": "delete", "replica": "S1", "confirmed_dead": True, "reason": "exited"}]})
    assert rm.unavailable
    decided(rm, rm.core._remove_members, ["S2"], "restarted without its state")
    assert rm.unavailable, "the reason it waits must stay in ftds status"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_an_rm_that_cannot_record_its_state_stops_before_acting_on_it(make_rm, monkeypatch, err):
    """Fail-stop: a view the RM could not make durable never leaves it (a restarted RM would
    not know its epoch and could issue it again), and the RM stops deciding and exits."""
    rm = make_rm()
    sent: list[View] = []
    rm._send_view = lambda view, primary_first: sent.append(view)

    def full(record: RmRecord) -> None:
        raise OSError(err, os.strerror(err))

    rm.store.save = full
    died: list[tuple[str, BaseException]] = []
    monkeypatch.setattr(supervise, "on_fatal", lambda name, exc: died.append((name, exc)))
    stable(rm, IDS)
    for rid in IDS:
        report(rm, rid, inc=f"i-{rid}")  # enough to bootstrap epoch 1
    assert [name for name, _ in died] == ["persist"]
    assert isinstance(died[0][1], OSError) and died[0][1].errno == err
    assert sent == [], "a view went out that the RM's record does not hold"
    rm.decide()
    report(rm, "S1", inc="i-S1")
    assert sent == [] and len(died) == 1


def test_a_reload_that_removes_the_primary_replaces_it(make_rm):
    """The reload carried out half of itself and then raised KeyError in the decision: the
    link was gone, the decisions raised on every later report and tick, and no view came."""
    rm = make_rm()
    view = serving(rm)
    for rid in IDS:
        report(rm, rid, inc=f"a-{rid}", seq=10, view=view)
    data = yaml.safe_load(Path(rm.config_path).read_text())
    data["replicas"] = [r for r in data["replicas"] if r["id"] != "S1"]
    Path(rm.config_path).write_text(yaml.safe_dump(data))
    rm.reload()
    assert "S1" not in rm.links
    assert rm.core.failover is not None and rm.core.failover.reason == \
        "removed from the cluster file"
    assert "S1" not in rm.status(rm.gfd)["replicas"]
    rm.core.failover.not_before = 0.0  # its lease is not under test here
    rm.decide()
    assert (rm.view.epoch, rm.view.primary, rm.view.members) == (3, "S2", ("S2", "S3"))
    assert RmStore(rm.state_dir).load().view["primary"] == "S2"


def test_a_reload_that_changes_the_mode_is_refused_as_the_replicas_refuse_it(make_rm, caplog):
    rm = make_rm()
    data = yaml.safe_load(Path(rm.config_path).read_text())
    data["mode"] = "active"
    data.setdefault("tunables", {})["lease"] = 0.25
    Path(rm.config_path).write_text(yaml.safe_dump(data))
    rm.reload()
    assert rm.config.mode == "passive" and rm.core.settings.mode == "passive"
    assert rm.core.settings.lease != 0.25, "part of a refused file was taken"
    assert "reload refused: mode" in caplog.text
