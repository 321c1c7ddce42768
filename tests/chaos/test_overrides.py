"""The checker's side of compound faults, without processes: what an operator override
excuses (only what the lone old primary acknowledged beyond the forced replica), the hostile
check, and the schedules that pick compound kinds."""

from __future__ import annotations

import math
from pathlib import Path

from ftds_tools.chaos.checks import check_hostile, excuse_forced_loss, parse_replica_logs
from ftds_tools.chaos.history import Op
from ftds_tools.chaos.nemesis import COMPOUND_KINDS, LAB_KINDS, LOCAL_KINDS, LocalTarget, Schedule
from ftds_tools.chaos.runner import judge

# S1 ordered epoch 1; its backups were stopped at t=10 and dropped; it acknowledged alone and
# was killed at t=11; S2, forced at seq 100, ordered epoch 2.
LOGS = {"S1": "S1: I am the primary of epoch 1 (seq 0, ready: S1, S2, S3)\n",
        "S2": "S2: I am the primary of epoch 2 (seq 100, ready: S2)\n",
        "S3": ""}
OVERRIDE = {"kind": "force_primary", "old_primary": "S1", "old_epoch": 1, "forced": "S2",
            "forced_epoch": 2, "stopped_at": 10.0, "killed_at": 11.0}


def op(n: int, f: str, key: str, args: dict, result: dict | None, invoke: float,
       complete: float, replica: str, seq: int, epoch: int, outcome: str = "ok",
       process: str = "C1") -> Op:
    return Op(n, process, f, key, {"op": f, "key": key, **args}, invoke, complete, outcome,
              result, replica, seq, epoch, invoke, n + 1)


def history() -> list[Op]:
    return [
        # Acknowledged by all three before the stop: must survive.
        op(0, "put", "x", {"value": 1}, {"ok": True}, 1.0, 1.1, "S1", 90, 1, process="C1"),
        # Acknowledged by S1 alone beyond the forced seq: the override may lose it.
        op(1, "put", "x", {"value": 2}, {"ok": True}, 10.4, 10.5, "S1", 105, 1, process="C2"),
        # A read S1 acknowledged alone, of the lost write.
        op(2, "get", "x", {}, {"ok": True, "value": 2}, 10.6, 10.7, "S1", 106, 1,
           process="C3"),
        # After the override: the lost write is gone.
        op(3, "get", "x", {}, {"ok": True, "value": 1}, 12.0, 12.1, "S2", 101, 2,
           process="C1"),
    ]


def test_only_what_the_lone_primary_acknowledged_is_excused():
    _, takeovers = parse_replica_logs(LOGS)
    judged, excused = excuse_forced_loss(history(), takeovers, [OVERRIDE])
    assert [o.id for o in excused] == [1, 2]
    assert [o.outcome for o in judged] == ["ok", "info", "info", "ok"]
    assert math.isinf(judged[1].complete) and judged[1].result is None


def test_the_override_makes_the_run_valid_and_nothing_else_is_forgiven():
    ops = history()
    without = judge(ops, LOGS, None, None, final_expected=False)
    assert not without["valid"]
    # The lost put (a read is not a write) and the read of the value that disappeared.
    assert without["acked_lost"] == 1 and not without["linearizable"]
    with_override = judge(ops, LOGS, None, None, final_expected=False, overrides=[OVERRIDE])
    assert with_override["valid"], with_override["first_violation"]
    assert len(with_override["excused"]) == 2

    # A write acknowledged before the backups were stopped is never excused, even beyond the
    # forced seq (the real promise: it was held by every ready member).
    early = [*ops, op(4, "put", "y", {"value": 3}, {"ok": True}, 8.0, 9.0, "S1", 107, 1)]
    verdict = judge(early, LOGS, None, None, final_expected=False, overrides=[OVERRIDE])
    assert not verdict["valid"] and verdict["acked_lost"] == 1
    # Nor one held by the forced replica that the history does not show there, nor another
    # epoch's, nor another primary's.
    _, takeovers = parse_replica_logs(LOGS)
    held = op(5, "put", "z", {"value": 4}, {"ok": True}, 10.4, 10.5, "S1", 99, 1)
    other_epoch = op(6, "put", "z", {"value": 5}, {"ok": True}, 10.4, 10.5, "S1", 105, 2)
    other_primary = op(7, "put", "z", {"value": 6}, {"ok": True}, 10.4, 10.5, "S3", 105, 1)
    late = op(8, "put", "z", {"value": 7}, {"ok": True}, 12.4, 12.5, "S1", 105, 1)
    _, excused = excuse_forced_loss([held, other_epoch, other_primary, late], takeovers,
                                    [OVERRIDE])
    assert excused == []
    # Without the forced epoch's takeover in the logs, nothing is excused.
    _, excused = excuse_forced_loss(ops, parse_replica_logs({"S1": LOGS["S1"]})[1],
                                    [OVERRIDE])
    assert excused == []


def test_hostile_requests_must_be_refused():
    refused = op(0, "incr", "h.n", {"delta": 2**63 - 1}, {"ok": False, "error": "overflow"},
                 1.0, 1.1, "S1", 5, 1, outcome="fail")
    refused.hostile = "incr_overflow"
    accepted = op(1, "put", "k", {"value": "x"}, {"ok": True}, 2.0, 2.1, "S1", 6, 1)
    accepted.hostile = "reused_request_num"
    accepted.reuses = 3
    assert check_hostile([refused], []) == []
    problems = check_hostile([refused, accepted], [])
    assert [p.check for p in problems] == ["hostile accepted"]
    # Unless the original of the reused number was lost by an operator override.
    original = op(2, "put", "k", {"value": "y"}, {"ok": True}, 1.5, 1.6, "S1", 4, 1)
    original.request_num = 3
    assert check_hostile([refused, accepted], [original]) == []


def test_compound_kinds_are_scheduled_by_name_all_and_random(tmp_path: Path):
    target = LocalTarget(tmp_path)
    for name in COMPOUND_KINDS:
        assert Schedule.named(name, target, 2, 1).steps == [name, name]
    assert Schedule.named("kill,fault_during_recovery", target, 3, 1).steps == [
        "kill", "fault_during_recovery", "kill"]
    everything = set(Schedule.named("all", target, len(LOCAL_KINDS), 1).steps)
    assert {"fault_during_recovery", "primary_crash_backups_out",
            "rm_restart_with_replica_crash", "gfd_restart_with_replica_crash"} <= everything
    assert set(COMPOUND_KINDS) <= set(Schedule.named("random", target, 200, 1).steps)
    # The lab gets the kinds built from its own verbs; the override's clock is local only.
    assert "fault_during_recovery" in LAB_KINDS and "primary_crash_backups_out" not in LAB_KINDS


def test_an_unknown_schedule_is_refused_before_anything_starts(tmp_path: Path):
    import pytest

    from ftds_tools.chaos.runner import RunSettings, run_chaos

    with pytest.raises(ValueError, match="fault kinds of the local target"):
        run_chaos(RunSettings(out=tmp_path / "chaos", schedule="power_cut"))
    assert not (tmp_path / "chaos").exists()
    Schedule.check_name("power_cut,fault_during_recovery", "lab")
