"""Maintenance holds: ``ftds ctl hold S2 --reason ...`` keeps the RM from relaunching S2 until
``ftds ctl release S2``. The hold is on the RM's record, so a restarted RM keeps it, and
``ftds status`` shows it (a held replica makes the cluster DEGRADED, not OK)."""

from __future__ import annotations

import pytest

from ftds import local
from ftds.rm.manager import ReplicationManager
from ftds.rm.store import RmStore
from ftds.status import DEGRADED, health, status_text


class FakeConn:
    role = "admin"
    peer_id = "admin"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, kind, fields=None):
        self.sent.append((kind, fields or {}))

    def close(self):
        pass

    def is_closing(self):
        return False


@pytest.fixture
def make_rm(tmp_path):
    path = local.write_cluster(tmp_path, 3, base=42300)

    def make() -> ReplicationManager:
        rm = ReplicationManager(str(path))
        rm.relaunched = []
        rm.relauncher.tick = rm.relaunched.append  # what it would relaunch, not how
        return rm
    return make


def serving_without(rm: ReplicationManager, down: str) -> None:
    """S1 primary of S1..S3, then ``down`` is gone per the GFD."""
    members = [r for r in rm.core.replicas if r != down]
    rm.gfd = {"view": 1, "members": members, "stable": True, "lfds": {}}
    rm.core.gfd_stable = True
    for rid, info in rm.core.replicas.items():
        info.present = rid != down
        info.incarnation = f"a-{rid}"
    rm.core.confirmed = set(members)
    rm.core._out = []
    rm.core._issue(rm.core._make_view(1, 0, "S1", members), "test")
    for effect in rm.core._out:  # what a step carries out
        rm._carry_out(effect, None)


def admin(rm: ReplicationManager, kind: str, **fields) -> tuple[str, dict]:
    conn = FakeConn()
    rm._on_admin(conn, {"t": kind, **fields})
    assert len(conn.sent) == 1
    return conn.sent[0]


def test_a_held_replica_is_left_down_until_it_is_released(make_rm):
    rm = make_rm()
    serving_without(rm, "S2")
    rm.decide()
    assert rm.relaunched == [["S2"]], "an absent replica that is not held is relaunched"

    kind, body = admin(rm, "hold", replica="S2", reason="disk swap")
    assert kind == "ok" and body["replica"] == "S2"
    rm.relaunched.clear()
    rm.decide()
    assert rm.relaunched == [], "the RM relaunched a held replica"

    status = rm.status(rm.gfd)
    assert status["replicas"]["S2"]["held"] == "disk swap"
    code, why = health(status)
    assert code == DEGRADED and "S2 held (disk swap)" in why
    assert "HELD" in status_text(status)
    assert "held: S2" in rm.status_line(), "systemctl status ftds-rm must show the hold"

    kind, _ = admin(rm, "release", replica="S2")
    assert kind == "ok"
    rm.decide()
    assert rm.relaunched == [["S2"]]
    assert rm.status(rm.gfd)["replicas"]["S2"]["held"] is None


def test_a_hold_outlives_an_rm_restart(make_rm, tmp_path):
    rm = make_rm()
    serving_without(rm, "S3")
    admin(rm, "hold", replica="S3", reason="kernel update")
    assert RmStore(tmp_path).load().held == {"S3": {"reason": "kernel update",
                                                    "at": pytest.approx(
                                                        rm.core.record.held["S3"]["at"])}}
    again = make_rm()
    again.gfd = {"view": 1, "members": ["S1", "S2"], "stable": True, "lfds": {}}
    again.core.gfd_stable = True
    for rid, info in again.core.replicas.items():
        info.present = rid != "S3"
    again.decide()
    assert all("S3" not in batch for batch in again.relaunched)
    assert again.status(again.gfd)["replicas"]["S3"]["held"] == "kernel update"


def test_hold_and_release_name_what_is_wrong(make_rm):
    rm = make_rm()
    kind, body = admin(rm, "hold", replica="S9", reason="x")
    assert kind == "error" and body["code"] == "unknown_replica"
    kind, body = admin(rm, "release", replica="S2")
    assert kind == "error" and body["code"] == "not_held" and "S2 is not held" in body["message"]
    kind, body = admin(rm, "hold", replica="S2", reason="x" * 1000)
    assert kind == "error" and body["code"] == "bad_reason"
